// Command optvalues parks goroutines in functions whose arguments are of
// many kinds (integers, floats, bools, strings, slices, pointers, maps,
// channels, structs, arrays, interfaces, receivers, a generic), built the
// usual optimized way. Some arguments are used after the goroutine blocks
// (the compiler spills them to their argument slots), some are dead by then.
//
// Each function reports its arguments before it blocks: their values in
// Ex-Ray's JSON form, and the words Go's traceback prints for them (hex
// words, in ArgInfo order; a struct, array, string, slice or interface is a
// list of its words). Words are read through helpers that take the value as
// their own argument, so no argument of a parked function is address-taken.
//
//	-values PATH  {"<function>": {"<arg>": {"value": v, "words": [...]}}}
//
// Then it prints "READY pid=<pid>". It exits when stdin closes.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"runtime"
	"strings"
	"sync"
	"time"
	"unsafe"
)

type Pair struct {
	A int
	B string
}

type Small struct {
	X, Y int32
}

type Box struct {
	id   int
	name string
}

type arg struct {
	Value any `json:"value"`
	Words any `json:"words"`
}

var (
	mu      sync.Mutex
	got     = map[string]map[string]arg{}
	parked  sync.WaitGroup
	release = make(chan struct{})
	out     = make(chan string)
	pairs   = make(chan Pair)
	never   sync.WaitGroup

	gInt   int
	gAny   any
	gStr   string
	gFloat float64
)

func report(fn string, args map[string]arg) {
	mu.Lock()
	got[fn] = args
	mu.Unlock()
	parked.Done()
}

func hex(x uint64) string { return fmt.Sprintf("%#x", x) }

//go:noinline
func strWords(s string) []string {
	return []string{hex(uint64(uintptr(unsafe.Pointer(unsafe.StringData(s))))), hex(uint64(len(s)))}
}

//go:noinline
func sliceWords[T any](s []T) []string {
	return []string{hex(uint64(uintptr(unsafe.Pointer(unsafe.SliceData(s))))), hex(uint64(len(s))),
		hex(uint64(cap(s)))}
}

//go:noinline
func anyWords(e any) []string {
	w := *(*[2]uintptr)(unsafe.Pointer(&e))
	return []string{hex(uint64(w[0])), hex(uint64(w[1]))}
}

//go:noinline
func errWords(e error) []string {
	w := *(*[2]uintptr)(unsafe.Pointer(&e))
	return []string{hex(uint64(w[0])), hex(uint64(w[1]))}
}

//go:noinline
func mapWord(m map[string]int) string { return hex(uint64(uintptr(*(*unsafe.Pointer)(unsafe.Pointer(&m))))) }

//go:noinline
func chanWord(c chan int) string { return hex(uint64(uintptr(*(*unsafe.Pointer)(unsafe.Pointer(&c))))) }

//go:noinline
func ptrWord[T any](p *T) string { return hex(uint64(uintptr(unsafe.Pointer(p)))) }

func ints(xs []int) []any {
	out := []any{}
	for _, x := range xs {
		out = append(out, x)
	}
	return out
}

// ---- the parked functions ------------------------------------------------

//go:noinline
func scalars(a int, b int8, c uint16, d bool, e float64, f uintptr) {
	report("main.scalars", map[string]arg{
		"a": {a, hex(uint64(a))}, "b": {b, hex(uint64(uint8(b)))}, "c": {c, hex(uint64(c))},
		"d": {d, hex(map[bool]uint64{false: 0, true: 1}[d])}, "e": {e, hex(math.Float64bits(e))},
		"f": {f, hex(uint64(f))}})
	<-release
	gInt = a + int(b) + int(c) + int(f)
	if d {
		gFloat = e
	}
}

//go:noinline
func text(s string, bs []byte, xs []int) {
	report("main.text", map[string]arg{
		"s": {s, strWords(s)}, "bs": {ints(toInts(bs)), sliceWords(bs)}, "xs": {ints(xs), sliceWords(xs)}})
	<-release
	gStr = s + string(bs)
	gInt = len(xs) + xs[0]
}

func toInts(bs []byte) []int {
	out := []int{}
	for _, b := range bs {
		out = append(out, int(b))
	}
	return out
}

//go:noinline
func pointers(p *Pair, q *int, m map[string]int, ch chan int) {
	report("main.pointers", map[string]arg{
		"p": {map[string]any{"A": p.A, "B": p.B}, ptrWord(p)}, "q": {*q, ptrWord(q)},
		"m": {m, mapWord(m)},
		"ch": {map[string]any{"__chan": "chan int", "len": len(ch), "cap": cap(ch), "closed": false},
			chanWord(ch)}})
	<-release
	gInt = p.A + *q + m["k"] + cap(ch)
}

//go:noinline
func aggregates(p Pair, sm Small, arr [3]int) {
	report("main.aggregates", map[string]arg{
		"p":   {map[string]any{"A": p.A, "B": p.B}, []any{hex(uint64(p.A)), strWords(p.B)}},
		"sm":  {map[string]any{"X": sm.X, "Y": sm.Y}, []string{hex(uint64(uint32(sm.X))), hex(uint64(uint32(sm.Y)))}},
		"arr": {arr, []string{hex(uint64(arr[0])), hex(uint64(arr[1])), hex(uint64(arr[2]))}}})
	<-release
	gInt = p.A + len(p.B) + int(sm.X) + int(sm.Y) + arr[0] + arr[1] + arr[2]
}

//go:noinline
func ifaces(v any, err error) {
	report("main.ifaces", map[string]arg{
		"v":   {map[string]any{"__type": "int", "value": v}, anyWords(v)},
		"err": {map[string]any{"__type": "*errors.errorString", "value": map[string]any{"s": err.Error()}, "__error": err.Error()}, errWords(err)}})
	<-release
	gAny = v
	gStr = err.Error()
}

//go:noinline
func (b *Box) method(n int, label string) {
	report("main.(*Box).method", map[string]arg{
		"b": {map[string]any{"id": b.id, "name": b.name}, ptrWord(b)},
		"n": {n, hex(uint64(n))}, "label": {label, strWords(label)}})
	<-release
	b.id += n
	gStr = label + b.name
}

//go:noinline
func (p Pair) valueMethod(k int) {
	report("main.Pair.valueMethod", map[string]arg{
		"p": {map[string]any{"A": p.A, "B": p.B}, []any{hex(uint64(p.A)), strWords(p.B)}},
		"k": {k, hex(uint64(k))}})
	<-release
	gInt = p.A + k + len(p.B)
}

// deadAfter's arguments are not used after it blocks: the compiler need not
// keep them (Go's traceback prints `?` where it can't vouch for a slot).
//
//go:noinline
func deadAfter(a int, s string, p *Pair) {
	gInt = a + len(s) + p.A
	report("main.deadAfter", map[string]arg{
		"a": {a, hex(uint64(a))}, "s": {s, strWords(s)},
		"p": {map[string]any{"A": p.A, "B": p.B}, ptrWord(p)}})
	<-release
}

// mixed keeps a past the block, and not s.
//
//go:noinline
func mixed(a int, s string) {
	gStr = s
	report("main.mixed", map[string]arg{"a": {a, hex(uint64(a))}, "s": {s, strWords(s)}})
	<-release
	gInt = a * 2
}

// many has more integer arguments than registers (9 on amd64) and more
// components than Go's traceback prints (10).
//
//go:noinline
func many(a, b, c, d, e, f, g, h, i, j, k, l int) {
	all := []int{a, b, c, d, e, f, g, h, i, j, k, l}
	m := map[string]arg{}
	for n, name := range strings.Split("a b c d e f g h i j k l", " ") {
		m[name] = arg{all[n], hex(uint64(all[n]))}
	}
	report("main.many", m)
	<-release
	gInt = a + b + c + d + e + f + g + h + i + j + k + l
}

//go:noinline
func gen[T any](x T, n int) {
	var words any
	switch v := any(x).(type) {
	case int:
		words = hex(uint64(v))
	case string:
		words = strWords(v)
	}
	report(fmt.Sprintf("main.gen[%T]", x), map[string]arg{"x": {x, words}, "n": {n, hex(uint64(n))}})
	<-release
	gAny = x
	gInt = n
}

// sender blocks in a channel send, as in issue 10.
//
//go:noinline
func sender(msg string) {
	report("main.sender", map[string]arg{"msg": {msg, strWords(msg)}})
	out <- msg
}

// sendPair blocks sending its argument: the send reads it from its spill slot.
//
//go:noinline
func sendPair(p Pair) {
	report("main.sendPair", map[string]arg{
		"p": {map[string]any{"A": p.A, "B": p.B}, []any{hex(uint64(p.A)), strWords(p.B)}}})
	pairs <- p
}

// waitOn blocks in a call that takes one of its arguments; the other is
// only used before.
//
//go:noinline
func waitOn(wg *sync.WaitGroup, tag string) {
	gStr = tag
	report("main.waitOn", map[string]arg{"wg": {nil, ptrWord(wg)}, "tag": {tag, strWords(tag)}})
	wg.Wait()
}

func main() {
	values := flag.String("values", "", "write the arguments' values and words here")
	flag.String("dump", "", "unused")
	flag.Parse()
	go func() { io.Copy(io.Discard, os.Stdin); os.Exit(0) }()

	n := 42
	parked.Add(15)
	never.Add(1)
	go scalars(-7, -3, 65000, true, 2.5, 0xdead)
	go text("hello, optimized", []byte("abc"), []int{10, 20, 30, 40})
	go pointers(&Pair{11, "pointed"}, &n, map[string]int{"k": 5}, make(chan int, 3))
	go aggregates(Pair{12, "agg"}, Small{-1, 2}, [3]int{7, 8, 9})
	go ifaces(77, fmt.Errorf("plain"))
	go (&Box{3, "box"}).method(4, "lbl")
	go Pair{21, "recv"}.valueMethod(22)
	go deadAfter(31, "dead", &Pair{32, "dp"})
	go mixed(41, "mix")
	go many(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12)
	go gen(51, 52)
	go gen("g", 53)
	go sender("from sender")
	go sendPair(Pair{61, "sent"})
	go waitOn(&never, "tagged")
	parked.Wait()

	buf := make([]byte, 1<<20)
	for {
		st := string(buf[:runtime.Stack(buf, true)])
		blocked := 0
		for _, state := range []string{"[chan receive", "[chan send", "[semacquire", "[sync.WaitGroup.Wait"} {
			blocked += strings.Count(st, state)
		}
		if blocked >= 15 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	data, _ := json.Marshal(got)
	if err := os.WriteFile(*values, data, 0o644); err != nil {
		panic(err)
	}
	fmt.Printf("READY pid=%d\n", os.Getpid())
	select {}
}
