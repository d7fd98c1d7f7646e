// decode_real: values in globals for the decoder's real-process test.
//
// It prints one JSON line and then waits until stdin closes:
//
//	{"pid": n,
//	 "addrs":    {"main.<global>": "0x…"},          where each global lives
//	 "rtypes":   {"<dynamic type>": "0x…"},          runtime type addresses
//	 "dirLen":   n,                                  swiss directory length of bigMap
//	 "expected": {"main.<global>": <docs/values.md plain JSON>}}
//
// The expected JSON comes from encoding/json and Go's own String methods,
// independently of Ex-Ray's decoder.
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"
	"unsafe"
)

type Point struct {
	X, Y int
	Name string
	Tags []string
	Next *Point
	F    float64
	ok   bool
	arr  [3]int8
	When time.Time
	D    time.Duration
}

var (
	bigMap    map[string]int
	smallMap  map[int]string
	structVal Point
	sliceVal  []int
	strVal    string
	errVal    error
	anyVal    any
	anyPtr    any
	fnVal     func(string) string
)

func pointJSON(p *Point) any {
	if p == nil {
		return nil
	}
	arr := []int{int(p.arr[0]), int(p.arr[1]), int(p.arr[2])}
	return map[string]any{
		"X": p.X, "Y": p.Y, "Name": p.Name, "Tags": p.Tags, "Next": pointJSON(p.Next),
		"F": p.F, "ok": p.ok, "arr": arr,
		"When": p.When.UTC().Format(time.RFC3339Nano), "D": p.D.String(),
	}
}

func errorJSON(err error) any {
	if err == nil {
		return nil
	}
	out := map[string]any{"__type": fmt.Sprintf("%T", err), "__error": err.Error()}
	if u := errors.Unwrap(err); u != nil { // *fmt.wrapError{msg, err}
		out["value"] = map[string]any{"msg": err.Error(), "err": errorJSON(u)}
	} else { // *errors.errorString{s}
		out["value"] = map[string]any{"s": err.Error()}
	}
	return out
}

func rtype(x any) string {
	return fmt.Sprintf("%#x", (*[2]uintptr)(unsafe.Pointer(&x))[0])
}

func addr[T any](p *T) string { return fmt.Sprintf("%p", p) }

func main() {
	bigMap = make(map[string]int)
	for i := 0; i < 1000; i++ {
		bigMap[fmt.Sprintf("key%04d", i)] = i * i
	}
	smallMap = map[int]string{3: "three", -1: "minus one", 42: "answer"}
	loc := time.FixedZone("X", 3*3600)
	structVal = Point{
		X: 1, Y: -2, Name: "origin ✓", Tags: []string{"a", "b"}, F: 2.5, ok: true,
		arr:  [3]int8{-1, 0, 1},
		When: time.Date(2024, 2, 29, 23, 59, 58, 123456789, loc),
		D:    1500 * time.Millisecond,
		Next: &Point{X: 10, Name: "next", When: time.Now(), D: -90 * time.Second},
	}
	sliceVal = []int{5, 4, 3, 2, 1}
	strVal = "héllo, wörld \xff!"
	errVal = fmt.Errorf("open %s: %w", "/etc/x", errors.New("permission denied"))
	anyVal = Point{X: 7, Name: "in any"}
	anyPtr = &structVal
	fnVal = strings.ToUpper

	dirLen := *(*int)(unsafe.Add(*(*unsafe.Pointer)(unsafe.Pointer(&bigMap)), 24))
	anyPoint := anyVal.(Point)
	out := map[string]any{
		"pid": os.Getpid(),
		"addrs": map[string]string{
			"main.bigMap": addr(&bigMap), "main.smallMap": addr(&smallMap),
			"main.structVal": addr(&structVal), "main.sliceVal": addr(&sliceVal),
			"main.strVal": addr(&strVal), "main.errVal": addr(&errVal),
			"main.anyVal": addr(&anyVal), "main.anyPtr": addr(&anyPtr), "main.fnVal": addr(&fnVal),
		},
		"rtypes": map[string]string{
			"main.Point": rtype(anyVal), "*main.Point": rtype(anyPtr),
			"*fmt.wrapError": rtype(errVal), "*errors.errorString": rtype(errors.Unwrap(errVal)),
		},
		"dirLen": dirLen,
		"expected": map[string]any{
			"main.bigMap": bigMap, "main.smallMap": smallMap,
			"main.structVal": pointJSON(&structVal), "main.sliceVal": sliceVal,
			"main.strVal": strVal, "main.errVal": errorJSON(errVal),
			"main.anyVal": map[string]any{"__type": "main.Point", "value": pointJSON(&anyPoint)},
			"main.anyPtr": map[string]any{"__type": "*main.Point", "value": pointJSON(&structVal)},
			"main.fnVal":  "strings.ToUpper",
		},
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(out); err != nil {
		panic(err)
	}
	io.Copy(io.Discard, bufio.NewReader(os.Stdin)) // stay until the test closes stdin
}
