// Command parkers parks known numbers of identical goroutines, for the export
// and filter tests: counts per stack are known in advance, some goroutines
// carry pprof labels, and one stack has an inlined call.
//
// Protocol (as tests/goprogs/states): "READY pid=<pid>" once every goroutine is
// parked; SIGUSR1 writes runtime.Stack(all) to -dump and prints "DUMPED"; it
// exits when stdin closes.
//
//	main.parkChan      x -chan     chan receive
//	main.parkMutex     x -mutex    sync.Mutex.Lock (main holds the lock)
//	main.parkLabeled   x -labeled  chan receive, pprof labels handler=checkout, shard=<i%2>
//	main.parkSleep     x 1         sleep
//	main.lookup(...)   x 1         chan receive, inlined into main.parkInlined
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"sync"
	"syscall"
	"time"
)

var (
	parked sync.WaitGroup
	never  = make(chan int)
	mu     sync.Mutex
	sink   any
)

type store struct{ name string }

//go:noinline
func parkChan(id int) {
	parked.Done()
	<-never
	sink = id
}

//go:noinline
func parkMutex(id int) {
	parked.Done()
	mu.Lock()
	sink = id
}

//go:noinline
func parkLabeled(sku string) {
	parked.Done()
	<-never
	sink = sku
}

//go:noinline
func parkSleep() {
	parked.Done()
	time.Sleep(24 * time.Hour)
}

// lookup is small enough to be inlined into parkInlined.
func lookup(s *store, sku string) int {
	<-never
	return len(s.name) + len(sku)
}

//go:noinline
func parkInlined(s *store) {
	parked.Done()
	sink = lookup(s, "widget")
}

func dump(path string) {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	if err := os.WriteFile(path, buf, 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "parkers:", err)
		os.Exit(2)
	}
}

func main() {
	nchan := flag.Int("chan", 5, "goroutines in main.parkChan")
	nmutex := flag.Int("mutex", 3, "goroutines in main.parkMutex")
	nlabeled := flag.Int("labeled", 4, "goroutines in main.parkLabeled")
	dumpPath := flag.String("dump", "", "where SIGUSR1 writes runtime.Stack(all)")
	flag.Parse()
	time.AfterFunc(10*time.Minute, func() { os.Exit(3) })
	go func() {
		io.Copy(io.Discard, os.Stdin)
		os.Exit(0)
	}()
	sigc := make(chan os.Signal, 1)
	signal.Notify(sigc, syscall.SIGUSR1)

	mu.Lock()
	for i := 0; i < *nchan; i++ {
		parked.Add(1)
		go parkChan(i)
	}
	for i := 0; i < *nmutex; i++ {
		parked.Add(1)
		go parkMutex(i)
	}
	for i := 0; i < *nlabeled; i++ {
		parked.Add(1)
		labels := pprof.Labels("handler", "checkout", "shard", fmt.Sprint(i%2))
		go pprof.Do(context.Background(), labels, func(context.Context) { parkLabeled("widget") })
	}
	parked.Add(2)
	go parkSleep()
	go parkInlined(&store{name: "main"})
	parked.Wait()
	time.Sleep(50 * time.Millisecond) // let the last Done-ers reach their park
	fmt.Printf("READY pid=%d\n", os.Getpid())
	for range sigc {
		if *dumpPath != "" {
			dump(*dumpPath)
		}
		fmt.Println("DUMPED")
	}
}
