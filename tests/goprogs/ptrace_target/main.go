// ptrace_target: a Go program for the pause and memory tests of agent/ptrace.py.
//
// Prints one READY line with the addresses of known globals, then answers
// commands on stdin, one per line:
//   gap      -> "GAP max_ns=<n> ticks=<n>": longest gap the 1 ms watchdog saw since the last "gap"
//   usr1     -> "USR1 n=<n>": SIGUSR1s received so far
//   exit     -> exits 0
// Every SIGUSR1 also prints "SIGNAL usr1 n=<n>" as it arrives.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime"
	"sync/atomic"
	"syscall"
	"time"
)

var Answer uint64 = 0x1122334455667788

var Table [8192]byte

var maxGap atomic.Int64
var ticks atomic.Int64
var usr1 atomic.Int64
var sink atomic.Uint64

// watchdog sleeps 1 ms in a loop and records the longest gap between wake-ups:
// a pause of the process shows up here as a gap.
func watchdog() {
	last := time.Now()
	for {
		time.Sleep(time.Millisecond)
		now := time.Now()
		gap := int64(now.Sub(last))
		last = now
		ticks.Add(1)
		for {
			old := maxGap.Load()
			if gap <= old || maxGap.CompareAndSwap(old, gap) {
				break
			}
		}
	}
}

// worker owns an OS thread (LockOSThread) and does a little work every ms,
// like a service thread would.
func worker(id int) {
	runtime.LockOSThread()
	x := uint64(id)
	for {
		for i := 0; i < 1000; i++ {
			x = x*6364136223846793005 + 1442695040888963407
		}
		sink.Store(x)
		time.Sleep(time.Millisecond)
	}
}

// churn keeps creating and ending OS threads: a goroutine that exits while
// locked to its thread takes the thread with it.
func churn(max int) {
	sem := make(chan struct{}, max)
	for i := 0; ; i++ {
		sem <- struct{}{}
		go func(i int) {
			runtime.LockOSThread()
			time.Sleep(time.Duration(100+i%5*100) * time.Microsecond)
			<-sem
		}(i)
	}
}

func main() {
	threads := flag.Int("threads", 0, "goroutines locked to their own OS thread")
	churnMax := flag.Int("churn", 0, "if > 0, keep creating and ending up to this many threads")
	noStdin := flag.Bool("nostdin", false, "ignore stdin and run until killed")
	flag.Parse()

	for i := range Table {
		Table[i] = byte(i * 7)
	}
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, syscall.SIGUSR1)
	go func() {
		for range sigs {
			fmt.Printf("SIGNAL usr1 n=%d\n", usr1.Add(1))
		}
	}()
	go watchdog()
	for i := 0; i < *threads; i++ {
		go worker(i)
	}
	if *churnMax > 0 {
		go churn(*churnMax)
	}
	time.Sleep(20 * time.Millisecond) // let the threads start
	fmt.Printf("READY pid=%d answer_addr=%#x answer=%#x table_addr=%#x table_len=%d\n",
		os.Getpid(), uintptr(unsafePointer(&Answer)), Answer, uintptr(unsafePointer(&Table[0])), len(Table))

	if *noStdin {
		select {}
	}
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		switch in.Text() {
		case "gap":
			fmt.Printf("GAP max_ns=%d ticks=%d\n", maxGap.Swap(0), ticks.Swap(0))
		case "usr1":
			fmt.Printf("USR1 n=%d\n", usr1.Load())
		case "exit":
			os.Exit(0)
		}
	}
}
