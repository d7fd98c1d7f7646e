// Command exprs parks goroutines whose frames hold the values that the capture
// expressions of tests/test_exprs_e2e.py read: addresses (&x), promoted fields,
// interfaces asserted to their dynamic types, indexes of slices, strings and
// arrays, map lookups by string, integer and bool keys, len and cap.
//
//	main.inspect(st *state, sh, sh2 Shape, a any, e error, block <-chan struct{})
//	                  blocks on a channel receive
//	main.(*state).hold   locks st.mu, then blocks: the mutex holder
//	main.waiter(cs *state)   blocks in cs.mu.Lock(): the waiter
//
// Before READY it writes what it holds (encoding/json) to -values PATH,
// addresses as fmt's %p prints them. It exits when stdin closes.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"sync"
	"time"
)

type Base struct {
	ID   int
	Name string
}

type inner struct {
	A int
	B string
}

type Shape interface{ Area() int }

type rect struct{ W, H int }

func (r *rect) Area() int { return r.W * r.H }

type circle struct{ R int }

func (c circle) Area() int { return 3 * c.R * c.R }

type codeErr struct{ code int }

func (e *codeErr) Error() string { return fmt.Sprintf("code %d", e.code) }

type state struct {
	Base   // embedded: ID and Name are promoted
	mu     sync.Mutex
	tags   []string
	arr    [3]int16
	s      string
	byName map[string]int
	byID   map[int]*inner
	flags  map[bool]string
	neg    map[int8]uint16
	big    map[int64]string
	ch     chan int
	shape  Shape
	p      *inner
}

var (
	sink      []any
	localAddr string // &local in inspect, as %p prints it
)

//go:noinline
func inspect(st *state, sh Shape, sh2 Shape, a any, e error, ready chan<- struct{}, block <-chan struct{}) {
	local := 99
	localAddr = fmt.Sprintf("%p", &local) // local escapes: DWARF names it &local
	ready <- struct{}{}
	<-block
	sink = append(sink, st, sh, sh2, a, e, local) // every argument is live across the receive
	runtime.KeepAlive(st)
}

//go:noinline
func (st *state) hold(ready chan<- struct{}, block <-chan struct{}) {
	st.mu.Lock()
	ready <- struct{}{}
	<-block
	st.mu.Unlock()
	runtime.KeepAlive(st)
}

//go:noinline
func waiter(cs *state, started chan<- struct{}) {
	started <- struct{}{}
	cs.mu.Lock()
	cs.mu.Unlock()
	runtime.KeepAlive(cs)
}

func main() {
	values := flag.String("values", "", "write the expected values (JSON) here")
	_ = flag.String("dump", "", "unused; accepted for the test harness")
	flag.Parse()

	big := map[int64]string{}
	for i := int64(0); i < 600; i++ {
		big[i*3] = fmt.Sprintf("v%d", i*3)
	}
	st := &state{
		Base:   Base{ID: 42, Name: "conn-42"},
		tags:   []string{"alpha", "beta", "gamma"},
		arr:    [3]int16{-7, 8, 9},
		s:      "héllo",
		byName: map[string]int{"alpha": 1, "beta": 2, "gamma": 3},
		byID:   map[int]*inner{7: {A: 70, B: "seven"}, -1: {A: -10, B: "minus one"}},
		flags:  map[bool]string{true: "yes", false: "no"},
		neg:    map[int8]uint16{-3: 300, 5: 500},
		big:    big,
		ch:     make(chan int, 5),
		p:      &inner{A: 5, B: "five"},
	}
	st.tags = append(st.tags[:3:3], "delta") // cap 6 on amd64
	st.ch <- 1
	st.ch <- 2
	r := &rect{W: 3, H: 4}
	st.shape = r
	var sh Shape = r
	var sh2 Shape = circle{R: 6}
	var a any = "any string"
	var e error = &codeErr{code: 17}

	ready := make(chan struct{})
	block := make(chan struct{})
	go inspect(st, sh, sh2, a, e, ready, block)
	<-ready
	go st.hold(ready, block)
	<-ready
	started := make(chan struct{})
	go waiter(st, started)
	<-started
	for i := 0; i < 1000; i++ { // until the waiter sleeps on the mutex's semaphore
		if waiting(st) {
			break
		}
		time.Sleep(2 * time.Millisecond)
	}

	out := map[string]any{
		"st":         fmt.Sprintf("%p", st),
		"st.mu":      fmt.Sprintf("%p", &st.mu),
		"st.tags":    fmt.Sprintf("%p", &st.tags),
		"local":      localAddr,
		"st.p":       fmt.Sprintf("%p", st.p),
		"rect":       fmt.Sprintf("%p", r),
		"tags_len":   len(st.tags),
		"tags_cap":   cap(st.tags),
		"ch_len":     len(st.ch),
		"ch_cap":     cap(st.ch),
		"big_len":    len(st.big),
		"byName_len": len(st.byName),
		"s_len":      len(st.s),
		"s_1":        st.s[1],
	}
	b, _ := json.Marshal(out)
	if *values != "" {
		if err := os.WriteFile(*values, b, 0o644); err != nil {
			panic(err)
		}
	}
	fmt.Printf("READY pid=%d\n", os.Getpid())
	io.Copy(io.Discard, os.Stdin)
	close(block)
}

// waiting: the waiter sleeps on the mutex, as the runtime's own traceback says
// ("goroutine N [sync.Mutex.Lock]:").
func waiting(st *state) bool {
	buf := make([]byte, 1<<16)
	n := runtime.Stack(buf, true)
	return contains(string(buf[:n]), "[sync.Mutex.Lock")
}

func contains(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return true
		}
	}
	return false
}
