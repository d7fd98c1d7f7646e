// pclntab_basic: methods, closures, generic instances and inlined calls, and
// the runtime's own view of them (runtime.Callers + CallersFrames) as an oracle.
package main

import (
	"fmt"
	"os"
	"runtime"
	"strings"
)

type T struct{ n int }

//go:noinline
func (t *T) M() int { return record(t.n) }

//go:noinline
func (t T) V() int { return record(t.n + 1) }

// Map is instantiated for int (go.shape.int) and string.
//
//go:noinline
func Map[E any](xs []E, f func(E) E) []E {
	out := make([]E, 0, len(xs))
	for _, x := range xs {
		out = append(out, f(x))
	}
	return out
}

// inner and middle are small enough to be inlined into outer.
func inner(x int) int { return record(x * 2) }

func middle(x int) int { return inner(x+1) + 1 }

//go:noinline
func outer(x int) int { return middle(x) + 3 }

var sink int

// record prints the caller pcs and the runtime's expansion of them, once per call.
//
//go:noinline
func record(v int) int {
	pcs := make([]uintptr, 64)
	n := runtime.Callers(1, pcs)
	pcs = pcs[:n]
	var b strings.Builder
	for _, pc := range pcs {
		fmt.Fprintf(&b, " %#x", pc)
	}
	fmt.Printf("CALLERS%s\n", b.String())
	frames := runtime.CallersFrames(pcs)
	for {
		f, more := frames.Next()
		fmt.Printf("FRAME %#x %#x %s %s:%d\n", f.PC, f.Entry, f.Function, f.File, f.Line)
		if !more {
			break
		}
	}
	fmt.Println("END")
	sink += v
	return v
}

func main() {
	t := &T{n: 3}
	sink += t.M()
	sink += t.V()
	sink += outer(5)
	k := 7
	f := func(x int) int { return record(x + k) }
	Map([]int{1}, f)
	Map([]string{"a"}, func(s string) string { record(len(s)); return s + "!" })
	func() { sink += record(42) }()
	if len(os.Args) > 5 {
		fmt.Println(sink)
	}
}
