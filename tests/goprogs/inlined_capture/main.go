// Command inlined_capture parks goroutines inside main.handle, a small
// function the compiler inlines into two different callers (main.serveA and
// main.serveB; `go build -gcflags=-m` says "inlining call to handle"), into
// main.wrap, itself inlined into main.serveC (two inlined frames deep), and
// one more inside the out-of-line copy of handle (called through a function
// value, so there it is a physical frame). handle reports its own values on a
// channel, then blocks on a channel receive: both are runtime calls made from
// the inlined body, so the goroutine parks with main.handle as an inlined
// logical frame of its caller's physical frame.
//
//	-values PATH  {"<id>": {"id": .., "n": .., "local": .., "msg": .., "name": ..}}
//
// Then it prints "READY pid=<pid>". It exits when stdin closes.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"
	"time"
)

type Req struct {
	ID   int
	Name string
}

type Report struct {
	ID, N, Local int
	Msg, Name    string
}

var (
	reports   = make(chan Report, 100)
	block     = make(chan int)
	sink      int
	lastMsg   string
	outOfLine = handle // a call through this stays a real call to main.handle
)

// handle must stay small enough to be inlined: no calls but channel ops.
func handle(r *Req, n int) int {
	local := n*7 + r.ID
	msg := r.Name + "!"
	reports <- Report{r.ID, n, local, msg, r.Name}
	v := <-block
	lastMsg = msg // n, local and msg live across the receive
	return v + local + r.ID
}

//go:noinline
func serveA(id int) {
	a := id * 100
	sink += handle(&Req{ID: id, Name: fmt.Sprintf("a%d", id)}, a+1)
}

//go:noinline
func serveB(id int, tag string) {
	sink += handle(&Req{ID: id, Name: tag + fmt.Sprint(id)}, id*3) * 2
}

// wrap is inlined into serveC, and handle into it: two inlined frames deep.
func wrap(id int) int {
	return handle(&Req{ID: id, Name: "c"}, id+40) + 1
}

//go:noinline
func serveC(id int) {
	sink += wrap(id)
}

//go:noinline
func serveOutOfLine(id int) {
	sink += outOfLine(&Req{ID: id, Name: "o"}, id+5)
}

func main() {
	values := flag.String("values", "", "write the values main.handle reports here")
	flag.String("dump", "", "unused")
	flag.Parse()
	go func() { io.Copy(io.Discard, os.Stdin); os.Exit(0) }()
	kinds := map[int]string{1: "A", 2: "A", 3: "B", 4: "B", 5: "B", 6: "O", 7: "C"}
	for id, kind := range kinds {
		switch kind {
		case "A":
			go serveA(id)
		case "B":
			go serveB(id, "b")
		case "C":
			go serveC(id)
		default:
			go serveOutOfLine(id)
		}
	}
	got := map[string]map[string]any{}
	for range kinds {
		r := <-reports
		got[fmt.Sprint(r.ID)] = map[string]any{"id": r.ID, "n": r.N, "local": r.Local,
			"msg": r.Msg, "name": r.Name, "kind": kinds[r.ID]}
	}
	// Wait until every one of them is blocked in handle's receive.
	buf := make([]byte, 1<<20)
	for strings.Count(string(buf[:runtime.Stack(buf, true)]), "[chan receive") < len(kinds) {
		time.Sleep(time.Millisecond)
	}
	data, _ := json.Marshal(got)
	if err := os.WriteFile(*values, data, 0o644); err != nil {
		panic(err)
	}
	fmt.Printf("READY pid=%d\n", os.Getpid())
	select {}
}
