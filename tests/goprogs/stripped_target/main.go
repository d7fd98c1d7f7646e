// Command stripped_target is built twice by tests/test_stripped.py: once as is
// and once with -ldflags="-s -w". Ex-Ray must find the runtime's globals in the
// stripped twin from its code alone. It parks a few goroutines in distinct
// functions (one with pprof labels), prints "READY pid=<pid>", and exits when
// stdin closes or after -timeout.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/pprof"
	"sync"
	"time"
)

var (
	mu    sync.Mutex
	ready sync.WaitGroup
)

//go:noinline
func waitChan(c chan int) {
	ready.Done()
	<-c
}

//go:noinline
func waitMutex() {
	ready.Done()
	mu.Lock()
	mu.Unlock()
}

//go:noinline
func waitSleep(d time.Duration) {
	ready.Done()
	time.Sleep(d)
}

func main() {
	timeout := flag.Duration("timeout", 60*time.Second, "exit after this long")
	flag.Parse()

	mu.Lock()
	c := make(chan int)
	ready.Add(4)
	go waitChan(c)
	go waitChan(c)
	go waitMutex()
	// Labels make runtime/pprof's labelMap part of the binary (and its DWARF).
	pprof.Do(context.Background(), pprof.Labels("role", "sleeper"), func(context.Context) {
		go waitSleep(*timeout)
	})
	ready.Wait()
	fmt.Printf("READY pid=%d\n", os.Getpid())

	done := make(chan struct{})
	go func() {
		io.Copy(io.Discard, os.Stdin)
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(*timeout):
	}
	mu.Unlock()
	close(c)
}
