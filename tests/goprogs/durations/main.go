// Command durations reads one integer per line on stdin and prints
// time.Duration(n).String() for each: the reference for Ex-Ray's own
// duration formatting.
package main

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"time"
)

func main() {
	in := bufio.NewScanner(os.Stdin)
	out := bufio.NewWriter(os.Stdout)
	defer out.Flush()
	for in.Scan() {
		n, err := strconv.ParseInt(in.Text(), 10, 64)
		if err != nil {
			fmt.Fprintf(out, "error: %v\n", err)
			continue
		}
		fmt.Fprintln(out, time.Duration(n).String())
	}
}
