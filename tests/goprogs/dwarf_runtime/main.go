// dwarf_runtime: links runtime/pprof labels so the runtime layout reader can
// find runtime/pprof.labelMap, and keeps a few goroutines around.
package main

import (
	"context"
	"fmt"
	"runtime/pprof"
	"time"
)

func worker(ctx context.Context, ch chan int) {
	pprof.Do(ctx, pprof.Labels("role", "worker"), func(context.Context) {
		ch <- 1
	})
}

func main() {
	ch := make(chan int)
	for i := 0; i < 3; i++ {
		go worker(context.Background(), ch)
	}
	time.Sleep(10 * time.Millisecond)
	for i := 0; i < 3; i++ {
		<-ch
	}
	fmt.Println("done")
}
