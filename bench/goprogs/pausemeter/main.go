// Command pausemeter measures, from inside, how long it is stopped.
//
// It parks -n goroutines in main.park (a channel receive that never completes)
// and runs a meter goroutine locked to its own OS thread that spins reading the
// monotonic clock and keeps the largest gap between two readings. Any pause of
// the whole process (a ptrace stop, a stop-the-world) shows up as a gap.
//
// Commands, one per line on stdin, each answered with one line on stdout:
//
//	reset  forget the largest gap                       -> "ok"
//	gap    the largest gap since the last reset, in ns  -> "<ns>"
//	dump   pprof.Lookup("goroutine").WriteTo(io.Discard, 2), Go's own full
//	       goroutine dump (it stops the world)          -> "<ns it took>"
//
// With -requests the goroutines park in main.serve instead, each holding a
// whole request (the capture benchmark of issue 11): strings, a map of 3, a
// slice, an interface holding a pointer to a struct with a 200-byte slice,
// and a pointer to a session.
//
// It prints "READY pid=<pid> n=<n> gomaxprocs=<p>" once every goroutine is
// parked, and exits when stdin closes or after -timeout.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/pprof"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

var (
	maxGap  atomic.Int64 // ns
	spins   atomic.Uint64
	sink    atomic.Int64
	release = make(chan struct{})
)

// park is the frame the capture benchmark reads: an int and a string parameter
// that are passed on after the receive, so they stay live across it in the
// frame's stack slots, where DWARF can locate them in an outer frame.
//
//go:noinline
func park(id int, name string, ready *sync.WaitGroup) {
	ready.Done()
	<-release
	note(id, name)
}

//go:noinline
func note(id int, name string) {
	sink.Add(int64(id + len(name)))
}

type session struct {
	User    string
	Token   string
	Expires int64
}

type blob struct {
	Kind string
	Data []byte
}

type request struct {
	ID      int
	Method  string
	Path    string
	Headers map[string]string
	Tags    []string
	Body    any
	Session *session
}

// serve is the frame the whole-request capture reads (`req`).
//
//go:noinline
func serve(req *request, ready *sync.WaitGroup) {
	ready.Done()
	<-release
	note(req.ID, req.Path)
}

func newRequest(i int) *request {
	data := make([]byte, 200)
	for k := range data {
		data[k] = byte('a' + (i+k)%26)
	}
	return &request{
		ID:     i,
		Method: "GET",
		Path:   "/api/v1/items/" + strconv.Itoa(i),
		Headers: map[string]string{
			"Accept":       "application/json",
			"User-Agent":   "bench/" + strconv.Itoa(i%7),
			"X-Request-Id": "req-" + strconv.Itoa(i),
		},
		Tags:    []string{"bench", "tag-" + strconv.Itoa(i%5), "parked"},
		Body:    &blob{Kind: "payload", Data: data},
		Session: &session{User: "user-" + strconv.Itoa(i%100), Token: "tok-" + strconv.Itoa(i), Expires: int64(i)},
	}
}

func meter() {
	runtime.LockOSThread()
	epoch := time.Now()
	last := time.Since(epoch) // monotonic
	for {
		now := time.Since(epoch)
		gap := int64(now - last)
		last = now
		for {
			m := maxGap.Load()
			if gap <= m || maxGap.CompareAndSwap(m, gap) {
				break
			}
		}
		spins.Add(1)
	}
}

// settle waits until the meter has taken a few more readings, so a gap that
// just ended is recorded before it is reported.
func settle() {
	start := spins.Load()
	deadline := time.Now().Add(100 * time.Millisecond)
	for spins.Load()-start < 1000 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Microsecond)
	}
}

func main() {
	n := flag.Int("n", 100, "parked goroutines")
	requests := flag.Bool("requests", false, "park in main.serve, each holding a whole request")
	timeout := flag.Duration("timeout", 30*time.Minute, "exit after this long")
	flag.Parse()
	if runtime.GOMAXPROCS(0) < 2 {
		runtime.GOMAXPROCS(2) // the meter keeps one P busy; the command loop needs another
	}
	go func() {
		time.Sleep(*timeout)
		fmt.Fprintln(os.Stderr, "pausemeter: timeout")
		os.Exit(3)
	}()

	var ready sync.WaitGroup
	ready.Add(*n)
	for i := 0; i < *n; i++ {
		if *requests {
			go serve(newRequest(i), &ready)
		} else {
			go park(i, "worker-"+strconv.Itoa(i), &ready)
		}
	}
	ready.Wait()
	go meter()
	settle()
	time.Sleep(20 * time.Millisecond) // let the last parkers reach gopark
	maxGap.Store(0)

	out := bufio.NewWriter(os.Stdout)
	fmt.Fprintf(out, "READY pid=%d n=%d gomaxprocs=%d\n", os.Getpid(), *n, runtime.GOMAXPROCS(0))
	out.Flush()
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		switch in.Text() {
		case "reset":
			settle()
			maxGap.Store(0)
			fmt.Fprintln(out, "ok")
		case "gap":
			settle()
			fmt.Fprintln(out, maxGap.Load())
		case "dump":
			t0 := time.Now()
			pprof.Lookup("goroutine").WriteTo(io.Discard, 2)
			fmt.Fprintln(out, time.Since(t0).Nanoseconds())
		default:
			fmt.Fprintln(out, "error: unknown command", in.Text())
		}
		out.Flush()
	}
}
