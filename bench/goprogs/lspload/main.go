// Command lspload parks -n goroutines for the language server benchmark
// (bench/lsp.py).
//
// Each goroutine runs accept -> route -> handle and waits in handle at one of
// four lines (two channel receives, a mutex, a select), so the editor has
// several lines with frames, in three functions. handle's parameters req (a
// pointer to a struct) and name (a string) are used after the wait, so they
// stay live across it: the spec captures them.
//
// Commands, one per line on stdin, each answered with one line on stdout:
//
//	dump   pprof.Lookup("goroutine").WriteTo(io.Discard, 2), Go's own full
//	       goroutine dump (runtime.Stack of every goroutine) -> "<ns it took>"
//	bytes  the size of that dump                             -> "<bytes>"
//	spawn  park 4 more goroutines (one at each wait line)    -> "ok <total>"
//
// It prints "READY pid=<pid> n=<n>" once every goroutine is parked, and exits
// when stdin closes or after -timeout.
package main

import (
	"bufio"
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/pprof"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

type request struct {
	ID      int64
	Path    string
	Attempt int
	Started int64
}

var (
	gateA = make(chan struct{})
	gateB = make(chan struct{})
	mu    sync.Mutex
	sink  atomic.Int64
)

//go:noinline
func handle(req *request, name string, ready *sync.WaitGroup) {
	ready.Done()
	switch req.ID % 4 {
	case 0:
		<-gateA
	case 1:
		<-gateB
	case 2:
		mu.Lock()
		mu.Unlock()
	default:
		select {
		case <-gateA:
		case <-gateB:
		}
	}
	finish(req, name)
}

//go:noinline
func finish(req *request, name string) {
	sink.Add(req.ID + int64(len(name)+len(req.Path)))
}

//go:noinline
func route(id int, ready *sync.WaitGroup) {
	req := &request{ID: int64(id), Path: "/item/sku-" + strconv.Itoa(id%50), Attempt: id % 3,
		Started: time.Now().UnixNano()}
	if id%2 == 0 {
		handle(req, "worker-"+strconv.Itoa(id), ready)
	} else {
		handle(req, "backup-"+strconv.Itoa(id%7), ready)
	}
}

//go:noinline
func accept(id int, ready *sync.WaitGroup) {
	route(id, ready)
}

func main() {
	n := flag.Int("n", 100, "parked goroutines")
	timeout := flag.Duration("timeout", 30*time.Minute, "exit after this long")
	flag.Parse()
	go func() {
		time.Sleep(*timeout)
		fmt.Fprintln(os.Stderr, "lspload: timeout")
		os.Exit(3)
	}()
	mu.Lock() // held for good: the lockers wait
	var ready sync.WaitGroup
	ready.Add(*n)
	for i := 0; i < *n; i++ {
		go accept(i, &ready)
	}
	ready.Wait()
	time.Sleep(50 * time.Millisecond) // let the last ones reach their wait

	out := bufio.NewWriter(os.Stdout)
	fmt.Fprintf(out, "READY pid=%d n=%d\n", os.Getpid(), *n)
	out.Flush()
	next := *n
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		switch in.Text() {
		case "dump":
			t0 := time.Now()
			pprof.Lookup("goroutine").WriteTo(io.Discard, 2)
			fmt.Fprintln(out, time.Since(t0).Nanoseconds())
		case "bytes":
			var b bytes.Buffer
			pprof.Lookup("goroutine").WriteTo(&b, 2)
			fmt.Fprintln(out, b.Len())
		case "spawn":
			var more sync.WaitGroup
			more.Add(4)
			for i := 0; i < 4; i++ {
				go accept(next, &more)
				next++
			}
			more.Wait()
			time.Sleep(20 * time.Millisecond) // let them reach their wait
			fmt.Fprintln(out, "ok", next)
		default:
			fmt.Fprintln(out, "error: unknown command", in.Text())
		}
		out.Flush()
	}
}
