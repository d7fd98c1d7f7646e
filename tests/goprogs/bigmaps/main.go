// Command bigmaps parks goroutines holding maps of more than 8 entries (swiss
// tables with a directory on Go >= 1.24, several buckets before), for the read
// program's map walks and lookups (tests/test_read_program.py), and one
// holding 64 long lines: one slice whose strings fill more than a 16 KiB stage
// of the eBPF probe (tests/test_ebpf_runners.py).
//
// It prints "READY pid=<pid>" once the goroutines are parked and exits when
// stdin closes.
package main

import (
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
)

var never = make(chan int)

//go:noinline
func park(m map[string]string, e map[string]int, ready *sync.WaitGroup) {
	ready.Done()
	<-never
	fmt.Println(len(m), len(e))
}

//go:noinline
func parkLines(lines []string, ready *sync.WaitGroup) {
	ready.Done()
	<-never
	fmt.Println(len(lines))
}

func main() {
	m := map[string]string{}
	for i := 0; i < 300; i++ {
		m["k"+strconv.Itoa(i)] = "v" + strconv.Itoa(i)
	}
	e := map[string]int{"": 7}
	for i := 0; i < 20; i++ {
		e["x"+strconv.Itoa(i)] = i
	}
	lines := make([]string, 64)
	for i := range lines {
		lines[i] = strconv.Itoa(i) + ":" + strings.Repeat(string(rune('a'+i%26)), 300)
	}
	var ready sync.WaitGroup
	ready.Add(1)
	go parkLines(lines, &ready)
	for i := 0; i < 3; i++ {
		ready.Add(1)
		go park(m, e, &ready)
	}
	ready.Wait()
	fmt.Printf("READY pid=%d\n", os.Getpid())
	io.Copy(io.Discard, os.Stdin)
}
