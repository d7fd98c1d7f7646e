// Command generics parks goroutines inside every GC-shape instance of generic
// functions and of a generic method on a generic type:
//
//	main.Park[go.shape.int], main.Park[go.shape.string],
//	main.Park[go.shape.struct { X int; Y int; Label string }]
//	main.(*Cache[go.shape.string,go.shape.int]).Get,
//	main.(*Cache[go.shape.int,go.shape.string]).Get
//	main.Wait[...]: small enough to be inlined into its (non-generic) callers
//
// Each instance reports its own values (encoded by encoding/json: the oracle)
// before it blocks on a channel receive:
//
//	-values PATH  {"<id>": {"fn": "Park"|"Get"|"Wait", "id": .., "v": .., "key": .., "name": ..}}
//
// Then it prints "READY pid=<pid>". It exits when stdin closes.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"
	"time"
)

type Point struct {
	X, Y  int
	Label string
}

type Report struct {
	ID     int
	Fields map[string]any
}

var (
	reports = make(chan Report, 100)
	block   = make(chan int)
	sink    []any
)

// Box is a generic struct: Park reads one through a pointer.
type Box[T any] struct {
	V    T
	Note string
}

//go:noinline
func Park[T any](id int, v T, box *Box[T]) T {
	reports <- Report{id, map[string]any{"fn": "Park", "id": id, "v": v, "box": box}}
	<-block
	return v // v, box and id live across the receive
}

type Cache[K comparable, V any] struct {
	Name  string
	Hits  int
	items map[K]V
}

//go:noinline
func (c *Cache[K, V]) Get(id int, key K) V {
	c.Hits++
	reports <- Report{id, map[string]any{"fn": "Get", "id": id, "key": key, "name": c.Name, "hits": c.Hits}}
	<-block
	return c.items[key]
}

// Wait is small: the compiler inlines it into the callers below.
func Wait[T any](id int, v T) T {
	reports <- Report{id, map[string]any{"fn": "Wait", "id": id, "v": v}}
	<-block
	return v
}

//go:noinline
func waitInt(id int) { sink = append(sink, Wait(id, id*11)) }

//go:noinline
func waitString(id int) { sink = append(sink, Wait(id, fmt.Sprintf("w%d", id))) }

func main() {
	values := flag.String("values", "", "write the values the instances report here")
	flag.String("dump", "", "unused")
	flag.Parse()
	go func() { io.Copy(io.Discard, os.Stdin); os.Exit(0) }()
	n := 0
	start := func(f func()) { n++; go f() }
	start(func() { Park(1, 101, &Box[int]{1001, "b1"}) })
	start(func() { Park(2, -2, &Box[int]{-1002, "b2"}) })
	start(func() { Park(3, "three", &Box[string]{"box three", "b3"}) })
	start(func() { Park(4, "four, with \"quotes\"", &Box[string]{"", "b4"}) })
	start(func() { Park(5, Point{5, 50, "five"}, &Box[Point]{Point{55, 550, "box five"}, "b5"}) })
	start(func() { Park(6, Point{X: -6, Label: "six"}, &Box[Point]{Note: "b6"}) })
	// One cache per goroutine: Get counts its own hit before it reports.
	start(func() { (&Cache[string, int]{Name: "by-name", Hits: 10}).Get(7, "alpha") })
	start(func() { (&Cache[string, int]{Name: "by-name 2", Hits: 20}).Get(8, "beta") })
	start(func() { (&Cache[int, string]{Name: "by-id", Hits: 30, items: map[int]string{9000: "x"}}).Get(9, 9000) })
	start(func() { waitInt(10) })
	start(func() { waitString(11) })
	got := map[string]map[string]any{}
	for i := 0; i < n; i++ {
		r := <-reports
		got[fmt.Sprint(r.ID)] = r.Fields
	}
	// Wait until every one of them is blocked in its receive.
	buf := make([]byte, 1<<20)
	for strings.Count(string(buf[:runtime.Stack(buf, true)]), "[chan receive") < n {
		time.Sleep(time.Millisecond)
	}
	data, err := json.Marshal(got)
	if err != nil {
		panic(err)
	}
	if err := os.WriteFile(*values, data, 0o644); err != nil {
		panic(err)
	}
	fmt.Printf("READY pid=%d\n", os.Getpid())
	select {}
}
