// Command reports is a toy order service frozen mid-flight, for the report
// parity tests (tests/test_report_parity.py): handlers wait on the server's
// mutex holding requests (structs with a nested pointer, a map, a slice, a
// float and a 64-bit trace id), workers with pprof labels wait on their
// queues, janitors sleep.
//
// Protocol: once every goroutine is parked it prints "READY pid=<pid>" on
// stdout; it exits when stdin closes.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/pprof"
	"sync"
	"time"
)

type User struct {
	Name  string
	Tier  string
	Admin bool
}

type Item struct {
	SKU   string
	Qty   int
	Price int64 // cents
}

type Request struct {
	ID     int64
	Path   string
	User   *User
	Tags   map[string]string
	Items  []Item
	Budget float64
	Trace  uint64
}

type server struct {
	mu     sync.Mutex
	name   string
	served int
}

type queue struct {
	name  string
	depth int
	jobs  chan int
}

var parked sync.WaitGroup

var (
	alice = &User{Name: "alice", Tier: "gold", Admin: true}
	bob   = &User{Name: "bob", Tier: "free"}
	carol = &User{Name: "Carol", Tier: "gold"}
)

var requests = []*Request{
	{ID: 101, Path: "/api/orders", User: alice, Tags: map[string]string{"region": "eu"},
		Items: []Item{{"A-1", 2, 1250}, {"B-7", 1, 999}}, Budget: 50.5, Trace: 1<<53 + 1},
	{ID: 102, Path: "/api/Orders", User: bob, Items: []Item{{"A-1", 10, 1250}}, Budget: 7.25, Trace: 42},
	{ID: 103, Path: "/api/users", User: carol, Tags: map[string]string{"region": "us", "beta": "1"},
		Budget: 0, Trace: 1<<62 + 3},
	{ID: 104, Path: "/healthz", Trace: 7},
	{ID: 105, Path: "/api/orders", User: bob, Items: []Item{{"C-3", 3, 200}, {"A-1", 1, 1250}, {"D-9", 5, 10}},
		Budget: 120, Trace: 9},
	{ID: 106, Path: "/api/refunds", User: alice, Tags: map[string]string{"region": "eu"}, Budget: -3.5, Trace: 11},
}

//go:noinline
func (s *server) handle(req *Request) {
	parked.Done()
	s.mu.Lock() // main holds it: sync.Mutex.Lock
	s.served++
	s.mu.Unlock()
	runtime.KeepAlive(req)
}

//go:noinline
func worker(id int, q *queue) {
	parked.Done()
	for j := range q.jobs { // nobody sends: chan receive
		fmt.Println(id, j)
	}
	runtime.KeepAlive(q)
}

//go:noinline
func janitor(every time.Duration, name string) {
	parked.Done()
	time.Sleep(every)
	runtime.KeepAlive(name)
}

func main() {
	srv := &server{name: "orders"}
	srv.mu.Lock()
	for _, r := range requests {
		parked.Add(1)
		go func(r *Request) {
			labels := pprof.Labels("handler", r.Path, "kind", "http")
			pprof.Do(context.Background(), labels, func(context.Context) { srv.handle(r) })
		}(r)
	}
	queues := []*queue{{"emails", 3, make(chan int)}, {"invoices", 12, make(chan int)}}
	for i := 0; i < 5; i++ {
		q := queues[i%2]
		parked.Add(1)
		go func(i int) {
			pprof.Do(context.Background(), pprof.Labels("kind", "worker", "queue", q.name),
				func(context.Context) { worker(i, q) })
		}(i)
	}
	for _, d := range []time.Duration{time.Hour, 90 * time.Minute} {
		parked.Add(1)
		go janitor(d, fmt.Sprint("janitor-", d))
	}
	go func() { // exit when the test closes stdin
		io.Copy(io.Discard, os.Stdin)
		os.Exit(0)
	}()
	parked.Wait()
	time.Sleep(100 * time.Millisecond)
	fmt.Printf("READY pid=%d\n", os.Getpid())
	select {}
}
