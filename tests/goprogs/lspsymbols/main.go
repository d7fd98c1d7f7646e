package main

import (
	"fmt"
	"os"
	"sync"

	"example.com/svc/dotted.pkg"
	"example.com/svc/store"
)

type server struct {
	st *store.Store
	wg sync.WaitGroup
}

type counter int

var handlers = map[string]func(int) int{
	"double": func(x int) int { return x * 2 },
	"triple": func(x int) int { return x * 3 },
}

var funcs []func()

//go:noinline
func (s *server) handle(name string) {
	funcs = append(funcs, func() {
		fmt.Fprintln(os.Stderr, "first", name)
		funcs = append(funcs, func() {
			fmt.Fprintln(os.Stderr, "nested", name)
			funcs = append(funcs, func() { fmt.Fprintln(os.Stderr, "deeper", name) })
		})
		funcs = append(funcs, func() { fmt.Fprintln(os.Stderr, "nested two", name) })
	})
	funcs = append(funcs, func() { fmt.Fprintln(os.Stderr, "second", name) })
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		s.st.Put(name, "v")
	}()
	s.wg.Wait()
}

//go:noinline
func (c counter) value() int { return int(c) }

//go:noinline
func work(n int) int {
	total := 0
	step := func(i int) { total += i }
	funcs = append(funcs, func() { step(n) })
	for i := 0; i < n; i++ {
		step(i)
	}
	return total
}

//go:noinline
func Seq(n int) func(yield func(int) bool) {
	return func(yield func(int) bool) {
		for i := 0; i < n; i++ {
			if !yield(i) {
				return
			}
		}
	}
}

//go:noinline
func sum(n int) int {
	t := 0
	for i := range Seq(n) {
		t += i
		funcs = append(funcs, func() { fmt.Fprintln(os.Stderr, i) })
	}
	return t
}

func init() {
	funcs = append(funcs, func() { fmt.Fprintln(os.Stderr, "init one") })
}

func init() {
	funcs = append(funcs, func() { fmt.Fprintln(os.Stderr, "init two") })
}

func main() {
	s := &server{st: store.New()}
	s.st.OnPut("p:")
	s.handle("a")
	for _, f := range funcs {
		f()
	}
	for len(funcs) > 0 {
		f := funcs[0]
		funcs = funcs[1:]
		f()
	}
	Apply([]int{1}, func(int) {})
	b := &store.Box[int]{}
	b.Set(4)
	bs := &store.Box[string]{}
	bs.Set("x")
	v, _ := s.st.Get("a")
	fmt.Println(v, s.st.Keys(), counter(3).value(), work(3), sum(4), b.Get(), bs.Get(),
		store.Key("k").String(), store.Describe(2), nested(3), dotted.Greet("g"), handlers["double"](1), handlers["triple"](1), store.Sink)
}

//go:noinline
func nested(n int) int {
	t := 0
	f := func() { t++ }
	for i := range Seq(n) {
		for j := range Seq(i) {
			t += j
			funcs = append(funcs, func() { fmt.Fprintln(os.Stderr, "inner", j) })
		}
		funcs = append(funcs, func() { fmt.Fprintln(os.Stderr, "outer", i) })
	}
	funcs = append(funcs, f, func() { fmt.Fprintln(os.Stderr, "after") })
	for k := range []int{1, 2} {
		funcs = append(funcs, func() { fmt.Fprintln(os.Stderr, "slice", k) })
	}
	return t
}

//go:noinline
func Apply[T any](xs []T, f func(T)) {
	for _, x := range xs {
		funcs = append(funcs, func() { f(x) })
	}
}
