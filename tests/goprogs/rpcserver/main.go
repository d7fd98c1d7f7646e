// Command rpcserver is the server half of a two-binary net/rpc service for
// Ex-Ray's end-to-end test of one spec across binaries
// (tests/test_two_binaries.py; its client is tests/goprogs/rpcclient, a
// different main package).
//
//	rpcserver -addr-file F -expect N
//	    listens on 127.0.0.1 (a free port, written to F) and serves the
//	    net/rpc service "Accounts". Before READY it starts an audit job that
//	    locks one client's account ("acme") and keeps it locked until exit.
//	    Prints READY, then the job's line, then one HANDLE line per request
//	    and PARKED once N requests are in their handlers.
//
// Accounts.Deposit needs the account's lock, so a deposit to acme waits
// behind the audit (wait reason sync.Mutex.Lock). Accounts.Balance asks a
// ledger backend that never answers (chan receive). The process exits when
// stdin closes.
//
// wait_ns of a goroutine comes from g.waitsince, which a GC stamps; the
// server runs one at start and one once every handler has parked (see
// rpcclient for the client's side of this).
package main

import (
	"flag"
	"fmt"
	"io"
	"net"
	"net/rpc"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"
)

var (
	addrFile = flag.String("addr-file", "", "write the listening address here")
	expect   = flag.Int("expect", 0, "print PARKED once this many requests are in their handlers")
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

// account is one client's state on the server.
type account struct {
	mu      sync.Mutex // first field: an *account is the address of its mutex
	name    string
	balance int64
}

type auditJob struct {
	Name    string
	Started int64 // unix ns
}

// audit is the background job: it locks the account and, for this program,
// keeps it locked until the process exits.
//
//go:noinline
func (a *account) audit(j *auditJob, locked chan<- string) {
	a.mu.Lock()
	j.Started = time.Now().UnixNano()
	locked <- fmt.Sprintf("JOB name=%s goid=%d lock=%p account=%s", j.Name, goid(), &a.mu, a.name)
	<-release
	a.balance += 0
	a.mu.Unlock()
	sink = j // keeps j and a live across the wait
}

// Args and Reply are the net/rpc messages; the client has its own copies.
type Args struct {
	ReqID   string
	Account string
	Amount  int64
}

type Reply struct {
	ReqID   string
	Balance int64
}

// Accounts is the net/rpc service.
type Accounts struct {
	mu       sync.Mutex // guards accounts
	accounts map[string]*account
	backend  chan int64 // the ledger backend: never answers
	arrived  sync.WaitGroup
}

//go:noinline
func (s *Accounts) get(name string) *account {
	s.mu.Lock()
	defer s.mu.Unlock()
	a := s.accounts[name]
	if a == nil {
		a = &account{name: name}
		s.accounts[name] = a
	}
	return a
}

func (s *Accounts) arrive(id, kind string) {
	say("HANDLE id=%s kind=%s goid=%d", id, kind, goid())
	s.arrived.Done()
}

// Deposit adds to an account's balance: it needs the account's lock.
func (s *Accounts) Deposit(args *Args, reply *Reply) error {
	id := args.ReqID
	s.arrive(id, "deposit")
	acct := s.get(args.Account)
	acct.mu.Lock()
	acct.balance += args.Amount
	n := acct.balance
	acct.mu.Unlock()
	reply.ReqID, reply.Balance = id, n
	sink = acct // id, acct live across Lock
	return nil
}

// Balance asks the ledger backend, which does not answer.
func (s *Accounts) Balance(args *Args, reply *Reply) error {
	id := args.ReqID
	s.arrive(id, "balance")
	var v int64
	select {
	case v = <-s.backend:
	case <-release:
	}
	reply.ReqID, reply.Balance = id, v // id live across the wait
	return nil
}

func main() {
	flag.Parse()
	runtime.GC() // see the note on wait_ns above
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	s := &Accounts{accounts: map[string]*account{}, backend: make(chan int64)}
	s.arrived.Add(*expect)
	srv := rpc.NewServer()
	if err := srv.RegisterName("Accounts", s); err != nil {
		panic(err)
	}
	go srv.Accept(ln)

	locked := make(chan string)
	go s.get("acme").audit(&auditJob{Name: "audit-acme"}, locked)
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
	io.Copy(io.Discard, os.Stdin)
	close(release)
	time.Sleep(20 * time.Millisecond)
}
