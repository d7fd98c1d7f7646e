// Package store is a small key-value store: methods on pointer and value
// receivers, generic types and functions, closures inside methods.
package store

import (
	"fmt"
	"sort"
	"sync"
)

type Store struct {
	mu    sync.Mutex
	items map[string]string
	hooks []func(string)
}

type Key string

//go:noinline
func New() *Store {
	return &Store{items: map[string]string{}}
}

//go:noinline
func (s *Store) Get(key string) (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.items[key]
	return v, ok
}

//go:noinline
func (s *Store) Put(key, value string) {
	s.mu.Lock()
	s.items[key] = value
	s.mu.Unlock()
	for _, h := range s.hooks {
		h(key)
	}
}

//go:noinline
func (s *Store) Keys() []string {
	var out []string
	for k := range s.items {
		out = append(out, k)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

//go:noinline
func (s *Store) OnPut(prefix string) {
	s.hooks = append(s.hooks, func(k string) {
		Sink = append(Sink, prefix+k)
	})
}

//go:noinline
func (k Key) String() string { return "key:" + string(k) }

// Box is generic: its methods are named with [...] shapes in the binary.
type Box[T any] struct{ v T }

//go:noinline
func (b *Box[T]) Set(v T) { b.v = v }

//go:noinline
func (b Box[T]) Get() T { return b.v }

//go:noinline
func Map[T, U any](in []T, f func(T) U) []U {
	out := make([]U, 0, len(in))
	for _, x := range in {
		out = append(out, f(x))
	}
	return out
}

var Sink []string

//go:noinline
func Describe(n int) string {
	return fmt.Sprint(Map([]int{n, n + 1}, func(i int) string { return fmt.Sprint(i * 2) }))
}
