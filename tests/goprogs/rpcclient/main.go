// Command rpcclient is the client half of a two-binary net/rpc service for
// Ex-Ray's end-to-end test of one spec across binaries
// (tests/test_two_binaries.py; its server is tests/goprogs/rpcserver, a
// different main package).
//
//	rpcclient -addr-file F -first K -balances B
//	    calls Accounts.Deposit for account acme (request id req-K) and then
//	    B times Accounts.Balance (req-K+1, ...), one after the other, each
//	    while the earlier ones still wait; prints READY, then one CALL line
//	    per call.
//
// The deposit waits behind the server's audit job, which holds acme's lock;
// the balances wait for a backend that never answers. Each call's goroutine
// waits for its reply (chan receive). The process exits when stdin closes.
//
// wait_ns of a goroutine comes from g.waitsince, which the runtime sets only
// when a GC finds the goroutine blocked, and then to the time the previous GC
// ended. So the client runs a GC at start and one more after each call has
// parked: calls started earlier show longer waits.
package main

import (
	"flag"
	"fmt"
	"io"
	"net/rpc"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"
)

var (
	addrFile = flag.String("addr-file", "", "read the server's address from here")
	first    = flag.Int("first", 101, "id of the first request")
	balances = flag.Int("balances", 3, "how many Balance calls after the Deposit")
	_        = flag.String("dump", "", "unused; accepted for the test harness")

	outMu sync.Mutex
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

// Args and Reply match the server's messages (gob matches fields by name).
type Args struct {
	ReqID   string
	Account string
	Amount  int64
}

type Reply struct {
	ReqID   string
	Balance int64
}

type caller struct {
	rpc  *rpc.Client
	done chan string
}

// call makes one request and waits for its reply; it sends its goroutine id
// on sent once the request is on the wire (net/rpc writes it in Go).
//
//go:noinline
func (c *caller) call(id, method string, started int64, sent chan<- int64) {
	args := &Args{ReqID: id, Account: "acme", Amount: 25}
	var reply Reply
	pending := c.rpc.Go("Accounts."+method, args, &reply, make(chan *rpc.Call, 1))
	sent <- goid()
	<-pending.Done
	c.done <- fmt.Sprintf("%s %s %d: %v %d", id, method, started, pending.Error, reply.Balance) // id, method, started live across the wait
}

func main() {
	flag.Parse()
	runtime.GC() // see the note on wait_ns above
	addr, err := os.ReadFile(*addrFile)
	if err != nil {
		panic(err)
	}
	client, err := rpc.Dial("tcp", string(addr))
	if err != nil {
		panic(err)
	}
	c := &caller{rpc: client, done: make(chan string, 1+*balances)}
	var lines []string
	for i := 0; i <= *balances; i++ {
		id, method := fmt.Sprintf("req-%d", *first+i), "Balance"
		if i == 0 {
			method = "Deposit"
		}
		started := time.Now().UnixNano()
		sent := make(chan int64, 1)
		go c.call(id, method, started, sent)
		g := <-sent
		time.Sleep(40 * time.Millisecond) // the call parks waiting for its reply
		runtime.GC()                      // stamps its g.waitsince: earlier calls wait longer
		lines = append(lines, fmt.Sprintf("CALL id=%s method=%s goid=%d started=%d", id, method, g, started))
	}
	say("READY pid=%d", os.Getpid())
	for _, l := range lines {
		say("%s", l)
	}
	io.Copy(io.Discard, os.Stdin)
	client.Close()
	time.Sleep(20 * time.Millisecond)
}
