// dwarf_types: the oracle for the DWARF reader. It declares a variety of
// types, prints their layout as Go itself sees it (unsafe.Sizeof/Offsetof via
// reflect) as JSON, and has functions with known parameters and locals.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"reflect"
	"sync"
	"time"
)

type inner struct {
	A int8
	b string
	C [3]uint16
}

type Named int64

type Shape interface {
	Area() float64
}

type square struct{ side float64 }

func (s square) Area() float64 { return s.side * s.side }

type server struct {
	inner
	name     string
	port     uint16
	ratio    float32
	c        complex128
	ok       bool
	tags     []string
	counts   map[string]int
	byID     map[int64]*server
	ch       chan int
	fn       func(int) error
	any      interface{}
	shape    Shape
	parent   *server
	mu       sync.Mutex
	n        Named
	arr      [4]byte
	deadline time.Time
	ptr      uintptr
}

type pair[K comparable, V any] struct {
	Key K
	Val V
}

type layout struct {
	Name   string        `json:"name"`
	Size   uintptr       `json:"size"`
	Fields []fieldLayout `json:"fields"`
}

type fieldLayout struct {
	Name     string  `json:"name"`
	Offset   uintptr `json:"offset"`
	Type     string  `json:"type"`
	Embedded bool    `json:"embedded"`
}

func describe(name string, t reflect.Type) layout {
	l := layout{Name: name, Size: t.Size()}
	if t.Kind() == reflect.Struct {
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			l.Fields = append(l.Fields, fieldLayout{f.Name, f.Offset, f.Type.String(), f.Anonymous})
		}
	}
	return l
}

var globalServer = &server{name: "global", port: 8080}
var globalCounter int64 = 42

//go:noinline
func handle(s *server, id int64, label string) (int, error) {
	total := 0
	for i, t := range s.tags {
		total += i + len(t)
	}
	if id > 100 {
		extra := id * 2
		total += int(extra)
	}
	s.counts[label] = total
	return total, nil
}

//go:noinline
func usePair(p pair[string, int]) int { return len(p.Key) + p.Val }

func inlinedHelper(s *server, x int) int {
	doubled := x * 2
	s.port += uint16(doubled)
	return int(s.port) * 3
}

//go:noinline
func callsInlined(s *server, y int) int {
	z := inlinedHelper(s, y)
	return z + inlinedHelper(s, z)
}

func main() {
	s := &server{name: "a", tags: []string{"x", "yy"}, counts: map[string]int{},
		byID: map[int64]*server{}, ch: make(chan int, 1), shape: square{2}, any: 3}
	s.parent = globalServer
	n, _ := handle(s, 7, "lbl")
	n += usePair(pair[string, int]{"k", 1}) + callsInlined(s, n)
	if len(os.Args) > 1 && os.Args[1] == "layout" {
		out := []layout{
			describe("main.server", reflect.TypeOf(server{})),
			describe("main.inner", reflect.TypeOf(inner{})),
			describe("main.square", reflect.TypeOf(square{})),
			describe("main.pair[string,int]", reflect.TypeOf(pair[string, int]{})),
			describe("sync.Mutex", reflect.TypeOf(sync.Mutex{})),
			describe("time.Time", reflect.TypeOf(time.Time{})),
		}
		json.NewEncoder(os.Stdout).Encode(out)
		return
	}
	fmt.Println(n, globalCounter)
}
