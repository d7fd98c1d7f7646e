// inventory is Ex-Ray's sample service: an HTTP API whose requests queue
// behind a lock that a slow background reindex holds. The demo snapshots it
// while that happens.
package main

import (
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"
)

type item struct {
	SKU   string
	Count int
	Tags  []string
}

type store struct {
	mu          sync.Mutex
	items       map[string]*item
	reindexN    int
	lastRequest *request
	lastReindex time.Duration
}

type request struct {
	ID      int64
	Path    string
	Started time.Time
}

// lookup serves one request; it needs the store lock.
//
//go:noinline
func (s *store) lookup(req *request, sku string) (*item, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lastRequest = req
	it, ok := s.items[sku]
	if !ok {
		return nil, fmt.Errorf("sku %q not found", sku)
	}
	return it, nil
}

// reindex holds the lock for a long time: the reason requests pile up.
//
//go:noinline
func (s *store) reindex(pause time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reindexN++
	time.Sleep(pause)
	s.lastReindex = pause
}

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "listen address")
	pause := flag.Duration("reindex", time.Hour, "how long a reindex holds the lock")
	flag.Parse()

	s := &store{items: map[string]*item{}}
	for i := 0; i < 50; i++ {
		sku := fmt.Sprintf("sku-%03d", i)
		s.items[sku] = &item{SKU: sku, Count: i * 3, Tags: []string{"demo", strconv.Itoa(i % 5)}}
	}
	var nextID int64
	var idMu sync.Mutex
	http.HandleFunc("/item/", func(w http.ResponseWriter, r *http.Request) {
		idMu.Lock()
		nextID++
		req := &request{ID: nextID, Path: r.URL.Path, Started: time.Now()}
		idMu.Unlock()
		it, err := s.lookup(req, r.URL.Path[len("/item/"):])
		if err != nil {
			http.Error(w, err.Error(), http.StatusNotFound)
			return
		}
		fmt.Fprintf(w, "%s %d\n", it.SKU, it.Count)
	})
	http.HandleFunc("/reindex", func(w http.ResponseWriter, r *http.Request) {
		go s.reindex(*pause)
		fmt.Fprintln(w, "reindexing")
	})
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("listening on %s\n", ln.Addr())
	log.Fatal(http.Serve(ln, nil))
}
