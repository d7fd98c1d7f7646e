// Command linkpair parks clients whose requests a server holds, so Ex-Ray's
// tests can link a client goroutine to the server goroutine serving it, in
// one process or across two.
//
//	linkpair -self N               one process: a server and N clients of it
//	linkpair -serve ADDRFILE -expect N [-listen HOST:PORT]
//	                               a server (on 127.0.0.1:0 unless -listen
//	                               says where); writes its address to ADDRFILE,
//	                               prints READY, then PARKED once N requests wait
//	linkpair -connect ADDRFILE -n N -first K
//	                               N clients (request ids K, K+1, ...) of that server
//
// A client goroutine waits in main.call(id, path) for the reply; the server
// goroutine waits in main.handle(req) on a gate that opens only at exit. Both
// print "READY pid=<pid>" on stdout once every goroutine of theirs is parked,
// and exit when stdin closes.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

type request struct {
	ID      int64
	Path    string
	Started int64 // unix ns
}

var (
	gate     = make(chan struct{}) // closed at exit: handlers hold every request until then
	handled  sync.WaitGroup        // Done when a handler is about to block
	sent     sync.WaitGroup        // Done when a client has written its request
	sink     any
	_        = flag.String("dump", "", "unused; accepted for the test harness")
	listenOn = flag.String("listen", "127.0.0.1:0", "server: the address to listen on")
)

// handle holds one request until the gate opens.
//
//go:noinline
func handle(req *request, c net.Conn) {
	handled.Done()
	<-gate
	fmt.Fprintf(c, "done %d %s\n", req.ID, req.Path) // keeps req live across the wait
}

func serveConn(c net.Conn) {
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return
	}
	f := strings.Fields(line)
	id, _ := strconv.ParseInt(f[0], 10, 64)
	handle(&request{ID: id, Path: f[1], Started: time.Now().UnixNano()}, c)
}

func serve(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go serveConn(c)
	}
}

// call sends one request and waits for its reply.
//
//go:noinline
func call(addr string, id int64, path string) {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		panic(err)
	}
	fmt.Fprintf(c, "%d %s\n", id, path)
	sent.Done()
	reply, _ := io.ReadAll(c)
	sink = fmt.Sprint(id, path, string(reply)) // keeps id and path live across the wait
}

func startClients(addr string, first, n int) {
	for i := 0; i < n; i++ {
		id := int64(first + i)
		sent.Add(1)
		go call(addr, id, fmt.Sprintf("/item/sku-%03d", id))
	}
	sent.Wait()
}

func listen() net.Listener {
	ln, err := net.Listen("tcp", *listenOn)
	if err != nil {
		panic(err)
	}
	go serve(ln)
	return ln
}

func main() {
	self := flag.Int("self", 0, "one process: a server and this many clients")
	addrFile := flag.String("serve", "", "be a server; write the address to this file")
	expect := flag.Int("expect", 0, "server: print PARKED once this many requests wait")
	connect := flag.String("connect", "", "be a client of the server whose address is in this file")
	n := flag.Int("n", 1, "client: how many requests")
	first := flag.Int("first", 1, "client: id of the first request")
	flag.Parse()

	switch {
	case *self > 0:
		handled.Add(*self)
		ln := listen()
		startClients(ln.Addr().String(), *first, *self)
		handled.Wait()
	case *addrFile != "":
		handled.Add(*expect)
		ln := listen()
		if err := os.WriteFile(*addrFile, []byte(ln.Addr().String()), 0o644); err != nil {
			panic(err)
		}
		go func() { handled.Wait(); fmt.Println("PARKED") }()
	case *connect != "":
		addr, err := os.ReadFile(*connect)
		if err != nil {
			panic(err)
		}
		startClients(string(addr), *first, *n)
	}
	time.Sleep(50 * time.Millisecond) // let the last goroutines reach their wait
	fmt.Printf("READY pid=%d\n", os.Getpid())
	io.Copy(io.Discard, os.Stdin)
	close(gate)
}
