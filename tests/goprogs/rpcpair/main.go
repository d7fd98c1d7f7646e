// Command rpcpair is a small two-process HTTP service for Ex-Ray's
// end-to-end investigation test (tests/test_investigation.py, and the
// walkthrough in docs/investigation.md): a client whose slowest call is
// stuck because, in the server, a background job holds the ledger's lock.
//
//	rpcpair -mode server -addr-file F -expect N
//	    listens on 127.0.0.1 (a free port, written to F), starts the
//	    compaction job, which locks the ledger and keeps it locked until exit;
//	    prints READY, then the job's line, then one HANDLE line per request
//	    and PARKED once N requests are in their handlers.
//	rpcpair -mode client -addr-file F -first K -quotes Q
//	    calls POST /transfer (request id req-K) and then Q times GET /quote
//	    (req-K+1, ...), one after the other, each while the earlier ones still
//	    wait; prints READY, then one CALL line per call.
//
// Every request carries its id in the X-Request-Id header. /transfer needs
// the ledger's lock, so it waits behind the job (wait reason
// sync.Mutex.Lock); /quote waits for a pricing backend that never answers
// (chan receive). Both processes exit when stdin closes.
//
// wait_ns of a goroutine comes from g.waitsince, which the runtime sets only
// when a GC finds the goroutine blocked, and then to the time the previous GC
// ended (the first GC of a process stamps nothing). So both processes run a
// GC at start, and the client one more after each call has parked: a call is
// stamped with a time between its predecessor's start and its own, and calls
// started earlier show longer waits.
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"
)

var (
	mode     = flag.String("mode", "", "client or server")
	addrFile = flag.String("addr-file", "", "server: write the address here; client: read it from here")
	expect   = flag.Int("expect", 0, "server: print PARKED once this many requests are in their handlers")
	first    = flag.Int("first", 101, "client: id of the first request")
	quotes   = flag.Int("quotes", 3, "client: how many /quote calls after the /transfer")
	_        = flag.String("dump", "", "unused; accepted for the test harness")

	release = make(chan struct{}) // closed when stdin closes: everything blocked lets go
	sink    any
	outMu   sync.Mutex
)

func say(format string, args ...any) {
	outMu.Lock()
	defer outMu.Unlock()
	fmt.Printf(format+"\n", args...)
}

// goid is the current goroutine's id, as Go's own traceback prints it.
func goid() int64 {
	buf := make([]byte, 64)
	buf = buf[:runtime.Stack(buf, false)]
	f := strings.Fields(string(buf)) // "goroutine 18 [running]:"
	n, _ := strconv.ParseInt(f[1], 10, 64)
	return n
}

// ---------------------------------------------------------------- server

type ledger struct {
	mu      sync.Mutex // first field: a *ledger is the address of its mutex
	balance int64
	posted  int64
}

type job struct {
	Name    string
	Started int64 // unix ns
}

// compact is the background job: it takes the ledger's lock and, for this
// program, keeps it until the process exits.
//
//go:noinline
func (l *ledger) compact(j *job, locked chan<- string) {
	l.mu.Lock()
	j.Started = time.Now().UnixNano()
	locked <- fmt.Sprintf("JOB name=%s goid=%d lock=%p", j.Name, goid(), &l.mu)
	<-release
	l.posted = 0
	l.mu.Unlock()
	sink = j // keeps j and l live across the wait
}

type pricer struct {
	backend chan int64 // never answered: the slow sub-call
}

//go:noinline
func (p *pricer) price(sku string) int64 {
	select {
	case v := <-p.backend:
		return v
	case <-release:
		return int64(len(sku))
	}
}

type server struct {
	ledger  *ledger
	pricer  *pricer
	arrived sync.WaitGroup
}

func (s *server) arrive(id, kind string) {
	say("HANDLE id=%s kind=%s goid=%d", id, kind, goid())
	s.arrived.Done()
}

// transfer posts an amount to the ledger: it needs the ledger's lock.
//
//go:noinline
func (s *server) transfer(w http.ResponseWriter, r *http.Request) {
	id := r.Header.Get("X-Request-Id")
	amount, _ := strconv.ParseInt(r.URL.Query().Get("amount"), 10, 64)
	s.arrive(id, "transfer")
	led := s.ledger
	led.mu.Lock()
	led.balance += amount
	led.posted++
	n := led.posted
	led.mu.Unlock()
	fmt.Fprintf(w, "%s posted %d via %s %s\n", id, n, r.Method, r.URL.Path) // id, led, r live across Lock
}

// quote asks the pricing backend, which does not answer.
//
//go:noinline
func (s *server) quote(w http.ResponseWriter, r *http.Request) {
	id := r.Header.Get("X-Request-Id")
	sku := r.URL.Query().Get("sku")
	s.arrive(id, "quote")
	p := s.pricer.price(sku)
	fmt.Fprintf(w, "%s %s costs %d via %s %s\n", id, sku, p, r.Method, r.URL.Path)
}

func runServer() {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	s := &server{ledger: &ledger{balance: 1000}, pricer: &pricer{backend: make(chan int64)}}
	s.arrived.Add(*expect)
	mux := http.NewServeMux()
	mux.HandleFunc("/transfer", s.transfer) // no "POST /x" patterns: go.mod may say go 1.21
	mux.HandleFunc("/quote", s.quote)
	go http.Serve(ln, mux)

	locked := make(chan string)
	go s.ledger.compact(&job{Name: "compact-ledger"}, locked)
	jobLine := <-locked
	if err := os.WriteFile(*addrFile, []byte(ln.Addr().String()), 0o644); err != nil {
		panic(err)
	}
	say("READY pid=%d", os.Getpid())
	say("%s", jobLine)
	go func() {
		s.arrived.Wait()
		time.Sleep(50 * time.Millisecond) // let the last handler reach its wait
		runtime.GC()                      // stamps g.waitsince of the blocked handlers
		say("PARKED")
	}()
}

// ---------------------------------------------------------------- client

type client struct {
	base string
	http *http.Client
	done chan string
}

// call makes one request and waits for its reply; it sends its goroutine id
// on wrote once the request is on the wire.
//
//go:noinline
func (c *client) call(id, kind string, started int64, wrote chan<- int64) {
	me := goid()
	var req *http.Request
	if kind == "transfer" {
		req, _ = http.NewRequest("POST", c.base+"/transfer?amount=25", bytes.NewReader(nil))
	} else {
		req, _ = http.NewRequest("GET", c.base+"/quote?sku=sku-"+id, nil)
	}
	req.Header.Set("X-Request-Id", id)
	trace := &httptrace.ClientTrace{WroteRequest: func(httptrace.WroteRequestInfo) { wrote <- me }}
	req = req.WithContext(httptrace.WithClientTrace(context.Background(), trace))
	resp, err := c.http.Do(req)
	if err != nil {
		c.done <- fmt.Sprintf("%s %s %d: %v", id, kind, started, err)
		return
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	c.done <- fmt.Sprintf("%s %s %d: %s", id, kind, started, body) // id, kind, started live across Do
}

func runClient() {
	addr, err := os.ReadFile(*addrFile)
	if err != nil {
		panic(err)
	}
	c := &client{base: "http://" + string(addr), http: &http.Client{Transport: &http.Transport{}},
		done: make(chan string, 1+*quotes)}
	var lines []string
	for i := 0; i <= *quotes; i++ {
		id, kind := fmt.Sprintf("req-%d", *first+i), "quote"
		if i == 0 {
			kind = "transfer"
		}
		started := time.Now().UnixNano()
		wrote := make(chan int64, 1)
		go c.call(id, kind, started, wrote)
		g := <-wrote
		time.Sleep(40 * time.Millisecond) // the call parks waiting for its reply
		runtime.GC()                      // stamps its g.waitsince: earlier calls wait longer
		lines = append(lines, fmt.Sprintf("CALL id=%s kind=%s goid=%d started=%d", id, kind, g, started))
	}
	say("READY pid=%d", os.Getpid())
	for _, l := range lines {
		say("%s", l)
	}
}

func main() {
	flag.Parse()
	runtime.GC() // see the note on wait_ns above
	switch *mode {
	case "server":
		runServer()
	case "client":
		runClient()
	default:
		fmt.Fprintln(os.Stderr, "rpcpair: -mode client or server")
		os.Exit(2)
	}
	io.Copy(io.Discard, os.Stdin)
	close(release)
	time.Sleep(20 * time.Millisecond)
}
