// Command states parks goroutines in known, stable states, each in its own
// clearly named function, so Ex-Ray's tests can find them and compare what
// Ex-Ray reports with what Go's own runtime.Stack prints.
//
// Protocol: once every goroutine is parked it prints "READY pid=<pid>" on
// stdout. On SIGUSR1 it writes runtime.Stack(buf, true) to the -dump path and
// prints "DUMPED". It exits when stdin closes or after -timeout.
//
// Catalogue (function -> Go status in a runtime.Stack dump):
//
//	main.blockedSend            chan send
//	main.blockedRecv            chan receive
//	main.blockedSelect          select
//	main.blockedMutex           sync.Mutex.Lock        (main holds the lock)
//	main.blockedRWMutexRLock    sync.RWMutex.RLock     (main holds the write lock)
//	main.blockedRWMutexLock     sync.RWMutex.Lock      (main holds a read lock)
//	main.blockedWaitGroup       sync.WaitGroup.Wait
//	main.blockedCond            sync.Cond.Wait
//	main.blockedSleep           sleep
//	main.blockedAccept          IO wait
//	main.blockedConnRead        IO wait
//	main.blockedSyscall         syscall                (syscall.Read on a pipe)
//	main.blockedNilChan         chan receive (nil chan)
//	main.blockedSelectNoCases   select (no cases)
//	main.spin                   running / runnable, locked to thread
//	main.busy (x -busy)         running / runnable
//	main.inlinedLeaf(...)       chan receive  (inlined into main.inlinedMid(...) into main.inlineRoot)
//	main.(*server).handle       chan receive
//	main.server.valueMethod     chan receive
//	main.main.func1             chan receive  (closure literal in main)
//	main.makeWaiter.func1       chan receive  (closure made by a named function)
//	main.genericWait[...]       chan receive  (x2: from main.genericIntCaller, main.genericStringCaller)
//	main.recurse (x -depth)     chan receive  (from main.recursionRoot)
//	main.spawner                chan receive  (created by main.main)
//	main.spawnedChild           chan receive  (created by main.spawner in goroutine <spawner>)
//	main.extraWaiter (x -extra) chan receive
//	main.deafToURG (-deafurg)   chan receive, on a thread of its own that blocks SIGURG
package main

import (
	"bufio"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"time"
	"unsafe"
)

var (
	parked sync.WaitGroup // each goroutine calls Done just before it blocks
	never  = make(chan int)

	sendCh = make(chan int)
	recvCh = make(chan int)
	selA   = make(chan int)
	selB   = make(chan string)

	mu   sync.Mutex
	rwR  sync.RWMutex // main holds the write lock: RLock blocks
	rwW  sync.RWMutex // main holds a read lock: Lock blocks
	wgNo sync.WaitGroup
	cmu  sync.Mutex
	cond = sync.NewCond(&cmu)

	listener   net.Listener
	clientConn net.Conn // kept open by main so the server side never reads EOF
	pipeR      int
	pipeW      int

	spinCounter uint64
	busyCounter [16]uint64

	depth = flag.Int("depth", 300, "recursion depth of main.recurse")
	sink  any
)

//go:noinline
func blockedSend() {
	parked.Done()
	sendCh <- 1
}

//go:noinline
func blockedRecv() {
	parked.Done()
	<-recvCh
}

//go:noinline
func blockedSelect() {
	parked.Done()
	select {
	case <-selA:
	case selB <- "x":
	}
}

//go:noinline
func blockedMutex() {
	parked.Done()
	mu.Lock()
}

//go:noinline
func blockedRWMutexRLock() {
	parked.Done()
	rwR.RLock()
}

//go:noinline
func blockedRWMutexLock() {
	parked.Done()
	rwW.Lock()
}

//go:noinline
func blockedWaitGroup() {
	parked.Done()
	wgNo.Wait()
}

//go:noinline
func blockedCond() {
	cmu.Lock()
	parked.Done()
	for {
		cond.Wait() // nobody signals
	}
}

// deafToURG locks itself to its thread and blocks SIGURG there, then
// parks: a thread the eBPF probe's signal can't reach. Its tid goes to path.
//
//go:noinline
func deafToURG(path string) {
	runtime.LockOSThread()
	set := uint64(1) << (uint(syscall.SIGURG) - 1)
	if _, _, e := syscall.RawSyscall6(syscall.SYS_RT_SIGPROCMASK, 0 /* SIG_BLOCK */, uintptr(unsafe.Pointer(&set)),
		0, 8, 0, 0); e != 0 {
		panic(e)
	}
	must(os.WriteFile(path, []byte(strconv.Itoa(syscall.Gettid())), 0o644))
	parked.Done()
	<-never
}

//go:noinline
func blockedSleep() {
	parked.Done()
	time.Sleep(24 * time.Hour)
}

//go:noinline
func blockedAccept() {
	parked.Done()
	c, err := listener.Accept() // main connects exactly once before this starts
	if err == nil {
		sink = c
	}
}

//go:noinline
func blockedConnRead(c net.Conn) {
	buf := make([]byte, 16)
	parked.Done()
	c.Read(buf) // the client never writes
}

//go:noinline
func blockedSyscall() {
	buf := make([]byte, 16)
	parked.Done()
	syscall.Read(pipeR, buf) // blocking fd, nobody writes: the goroutine stays in _Gsyscall
}

//go:noinline
func blockedNilChan() {
	var c chan int
	parked.Done()
	<-c
}

//go:noinline
func blockedSelectNoCases() {
	parked.Done()
	select {}
}

// spin runs on its own locked thread and never calls anything.
//
//go:noinline
func spin() {
	for {
		spinCounter++
	}
}

//go:noinline
func spinRoot() {
	runtime.LockOSThread()
	parked.Done()
	spin()
}

//go:noinline
func busy(i int) {
	parked.Done()
	for {
		busyCounter[i&15]++
	}
}

// An inlined chain: main.inlineRoot calls inlinedMid, which calls inlinedLeaf,
// both small enough for the compiler to inline (checked with -gcflags=-m).
func inlinedLeaf(c chan int) int {
	return <-c
}

func inlinedMid(c chan int) int {
	return inlinedLeaf(c) + 1
}

//go:noinline
func inlineRoot() {
	parked.Done()
	sink = inlinedMid(never)
}

type server struct {
	name string
	reqs chan int
}

//go:noinline
func (s *server) handle() {
	parked.Done()
	<-s.reqs
}

//go:noinline
func (s server) valueMethod() {
	parked.Done()
	<-s.reqs
}

//go:noinline
func makeWaiter(c chan int) func() {
	return func() {
		parked.Done()
		<-c
	}
}

//go:noinline
func genericWait[T any](v T, c chan int) T {
	parked.Done()
	<-c
	return v
}

//go:noinline
func genericIntCaller() {
	sink = genericWait[int](42, never)
}

//go:noinline
func genericStringCaller() {
	sink = genericWait[string]("forty-two", never)
}

//go:noinline
func recurse(n int) int {
	if n <= 1 {
		parked.Done()
		return <-never
	}
	return recurse(n-1) + 1
}

//go:noinline
func recursionRoot() {
	sink = recurse(*depth)
}

//go:noinline
func spawnedChild() {
	parked.Done()
	<-never
}

//go:noinline
func spawner() {
	parked.Add(1)
	go spawnedChild()
	parked.Done()
	<-never
}

//go:noinline
func extraWaiter() {
	parked.Done()
	<-never
}

//go:noinline
func watchStdin() {
	io.Copy(io.Discard, os.Stdin)
	os.Exit(0)
}

func exitTimeout() { os.Exit(3) }

func must(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "states:", err)
		os.Exit(2)
	}
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
	must(os.WriteFile(path, buf, 0o644))
}

func main() {
	extra := flag.Int("extra", 0, "start N more goroutines parked on a chan receive (main.extraWaiter)")
	dumpPath := flag.String("dump", "", "where SIGUSR1 writes runtime.Stack(all)")
	nbusy := flag.Int("busy", 2, "busy goroutines (main.busy); 0 with -nospin for a quiet process")
	nospin := flag.Bool("nospin", false, "do not start main.spin")
	procs := flag.Int("procs", 2, "GOMAXPROCS")
	timeout := flag.Duration("timeout", 10*time.Minute, "exit after this long")
	deaf := flag.String("deafurg", "", "park main.deafToURG on a thread blocking SIGURG; its tid to this path")
	flag.Parse()

	runtime.GOMAXPROCS(*procs)
	time.AfterFunc(*timeout, exitTimeout)
	go watchStdin()

	sigc := make(chan os.Signal, 1)
	signal.Notify(sigc, syscall.SIGUSR1)

	// Locks that main holds for the whole run.
	mu.Lock()
	rwR.Lock()
	rwW.RLock()
	wgNo.Add(1)

	var err error
	listener, err = net.Listen("tcp", "127.0.0.1:0")
	must(err)
	clientConn, err = net.Dial("tcp", listener.Addr().String())
	must(err)
	serverConn, err := listener.Accept()
	must(err)
	var p [2]int
	must(syscall.Pipe(p[:]))
	pipeR, pipeW = p[0], p[1]

	if *deaf != "" {
		parked.Add(1)
		go deafToURG(*deaf)
	}
	parked.Add(1)
	go blockedSend()
	parked.Add(1)
	go blockedRecv()
	parked.Add(1)
	go blockedSelect()
	parked.Add(1)
	go blockedMutex()
	parked.Add(1)
	go blockedRWMutexRLock()
	parked.Add(1)
	go blockedRWMutexLock()
	parked.Add(1)
	go blockedWaitGroup()
	parked.Add(1)
	go blockedCond()
	parked.Add(1)
	go blockedSleep()
	parked.Add(1)
	go blockedAccept()
	parked.Add(1)
	go blockedConnRead(serverConn)
	parked.Add(1)
	go blockedSyscall()
	parked.Add(1)
	go blockedNilChan()
	parked.Add(1)
	go blockedSelectNoCases()
	parked.Add(1)
	go inlineRoot()
	s := &server{name: "srv", reqs: make(chan int)}
	parked.Add(1)
	go s.handle()
	parked.Add(1)
	go s.valueMethod()
	parked.Add(1)
	go func() { // main.main.func1: the only func literal in main
		parked.Done()
		<-never
	}()
	parked.Add(1)
	go makeWaiter(never)()
	parked.Add(1)
	go genericIntCaller()
	parked.Add(1)
	go genericStringCaller()
	parked.Add(1)
	go recursionRoot()
	parked.Add(1)
	go spawner()
	for i := 0; i < *extra; i++ {
		parked.Add(1)
		go extraWaiter()
	}
	if !*nospin {
		parked.Add(1)
		go spinRoot()
	}
	for i := 0; i < *nbusy; i++ {
		parked.Add(1)
		go busy(i)
	}

	parked.Wait()
	time.Sleep(100 * time.Millisecond)
	out := bufio.NewWriter(os.Stdout)
	fmt.Fprintf(out, "READY pid=%d\n", os.Getpid())
	out.Flush()

	for range sigc {
		if *dumpPath != "" {
			dump(*dumpPath)
		}
		fmt.Fprintln(out, "DUMPED")
		out.Flush()
	}
	// Keep everything main holds alive.
	runtime.KeepAlive(clientConn)
	runtime.KeepAlive(pipeW)
}
