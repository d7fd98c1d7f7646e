// Command values holds params and locals of every kind that docs/values.md
// describes in main.capture, parked on a channel receive, and writes the
// expected JSON of each with its own reflect-based encoder: the oracle that
// Ex-Ray's decoder is compared with.
//
//	-values PATH  {"<name>": <plain value>, ...} in declaration order
//	-raw PATH     the same in the raw form (pointers as {"__addr": <integer>, "value"})
//	-addrs PATH   {"<name>": "0x…"} for the roots that hold an address
//	              (pointer, unsafe.Pointer, map, chan, slice data)
//	-dump PATH    where SIGUSR1 writes runtime.Stack(all), then "DUMPED"
//
// Then it prints "READY pid=<pid>". It exits when stdin closes or after -timeout.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"os/signal"
	"reflect"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"
)

// ---- the types captured ------------------------------------------------

type Inner struct {
	A int
	b string
}

type Embedded struct {
	E int
}

type Embedded2 struct {
	F string
}

type S struct {
	Embedded
	*Embedded2
	Name      string
	count     int
	Inner     Inner
	P         *Inner
	__private int8
	tags      []string
	flags     [2]bool
}

type Point struct {
	X, Y int
}

type Node struct {
	Val  int
	Next *Node
}

type Pair[K comparable, V any] struct {
	Key  K
	Val  V
	More []V
}

// ---- the encoder: docs/values.md, independently of Ex-Ray ---------------

var (
	timeType     = reflect.TypeOf(time.Time{})
	durationType = reflect.TypeOf(time.Duration(0))
)

// Dynamic types of errors whose message is stored in the value itself, and
// the field that holds it.
var errorMsgField = map[string]string{
	"*errors.errorString": "s",
	"*fmt.wrapError":      "msg",
	"*fmt.wrapErrors":     "msg",
}

// hchanHead mirrors the first fields of runtime.hchan (checked at startup).
type hchanHead struct {
	qcount   uint
	dataqsiz uint
	buf      unsafe.Pointer
	elemsize uint16
	closed   uint32
}

type pathKey struct {
	addr uintptr
	t    reflect.Type
}

type encoder struct {
	raw  bool
	path map[pathKey]bool
	b    bytes.Buffer
}

func hexAddr(p uintptr) string { return "0x" + strconv.FormatUint(uint64(p), 16) }

func (e *encoder) str(s string) {
	// encoding/json turns invalid UTF-8 into U+FFFD.
	enc := json.NewEncoder(&e.b)
	enc.SetEscapeHTML(false)
	must(enc.Encode(s))
	e.b.Truncate(e.b.Len() - 1) // Encode's newline
}

func (e *encoder) float(f float64, bits int) {
	switch {
	case math.IsNaN(f):
		e.b.WriteString(`"NaN"`)
	case math.IsInf(f, 1):
		e.b.WriteString(`"+Inf"`)
	case math.IsInf(f, -1):
		e.b.WriteString(`"-Inf"`)
	default:
		e.b.WriteString(strconv.FormatFloat(f, 'g', -1, bits))
	}
}

// timeOf rebuilds a time.Time from its fields, without Interface() (which
// reflect refuses for values reached through unexported fields).
func timeOf(v reflect.Value) time.Time {
	var t time.Time
	p := (*[2]uint64)(unsafe.Pointer(&t))
	p[0] = v.Field(0).Uint()
	p[1] = uint64(v.Field(1).Int())
	return t // loc nil (UTC): the instant is the same
}

func (e *encoder) value(v reflect.Value) {
	t := v.Type()
	if t == timeType {
		e.str(timeOf(v).UTC().Format(time.RFC3339Nano))
		return
	}
	if t == durationType {
		e.str(time.Duration(v.Int()).String())
		return
	}
	switch v.Kind() {
	case reflect.Bool:
		e.b.WriteString(strconv.FormatBool(v.Bool()))
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		e.b.WriteString(strconv.FormatInt(v.Int(), 10))
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		e.b.WriteString(strconv.FormatUint(v.Uint(), 10))
	case reflect.Float32:
		e.float(v.Float(), 32)
	case reflect.Float64:
		e.float(v.Float(), 64)
	case reflect.Complex64, reflect.Complex128:
		bits := 64
		if v.Kind() == reflect.Complex64 {
			bits = 32
		}
		c := v.Complex()
		e.b.WriteString(`{"real":`)
		e.float(real(c), bits)
		e.b.WriteString(`,"imag":`)
		e.float(imag(c), bits)
		e.b.WriteString(`}`)
	case reflect.String:
		e.str(v.String())
	case reflect.Struct:
		e.b.WriteByte('{')
		for i := 0; i < v.NumField(); i++ {
			if i > 0 {
				e.b.WriteByte(',')
			}
			name := t.Field(i).Name // an embedded field is named by its type, without package
			if strings.HasPrefix(name, "__") {
				name = "_" + name
			}
			e.str(name)
			e.b.WriteByte(':')
			e.value(v.Field(i))
		}
		e.b.WriteByte('}')
	case reflect.Array:
		e.list(v)
	case reflect.Slice:
		if v.IsNil() {
			e.b.WriteString("null")
			return
		}
		e.list(v)
	case reflect.Map:
		e.mapValue(v)
	case reflect.Pointer:
		if v.IsNil() {
			e.b.WriteString("null")
			return
		}
		k := pathKey{v.Pointer(), t.Elem()}
		if e.path[k] {
			e.b.WriteString(`{"__cycle":`)
			e.str(hexAddr(k.addr))
			e.b.WriteByte('}')
			return
		}
		e.path[k] = true
		if e.raw {
			e.b.WriteString(`{"__addr":`) // an integer, as Ex-Ray stores addresses
			e.b.WriteString(strconv.FormatUint(uint64(k.addr), 10))
			e.b.WriteString(`,"value":`)
			e.value(v.Elem())
			e.b.WriteByte('}')
		} else {
			e.value(v.Elem())
		}
		delete(e.path, k)
	case reflect.UnsafePointer:
		if v.IsNil() {
			e.b.WriteString("null")
			return
		}
		e.str(hexAddr(v.Pointer()))
	case reflect.Interface:
		if v.IsNil() {
			e.b.WriteString("null")
			return
		}
		el := v.Elem()
		dyn := el.Type().String()
		e.b.WriteString(`{"__type":`)
		e.str(dyn)
		e.b.WriteString(`,"value":`)
		e.value(el)
		if f, ok := errorMsgField[dyn]; ok && !el.IsNil() {
			e.b.WriteString(`,"__error":`)
			e.str(el.Elem().FieldByName(f).String())
		}
		e.b.WriteByte('}')
	case reflect.Chan:
		if v.IsNil() {
			e.b.WriteString("null")
			return
		}
		h := (*hchanHead)(unsafe.Pointer(v.Pointer()))
		fmt.Fprintf(&e.b, `{"__chan":%q,"len":%d,"cap":%d,"closed":%t}`, t.String(), v.Len(), v.Cap(), h.closed != 0)
	case reflect.Func:
		if v.IsNil() {
			e.b.WriteString("null")
			return
		}
		e.str(runtime.FuncForPC(v.Pointer()).Name())
	default:
		panic("values: no encoding for kind " + v.Kind().String())
	}
}

func (e *encoder) list(v reflect.Value) {
	e.b.WriteByte('[')
	for i := 0; i < v.Len(); i++ {
		if i > 0 {
			e.b.WriteByte(',')
		}
		e.value(v.Index(i))
	}
	e.b.WriteByte(']')
}

// sub encodes v on its own (same mode and path) and returns the JSON text.
func (e *encoder) sub(v reflect.Value) string {
	s := encoder{raw: e.raw, path: e.path}
	s.value(v)
	return s.b.String()
}

func (e *encoder) mapValue(v reflect.Value) {
	if v.IsNil() {
		e.b.WriteString("null")
		return
	}
	type entry struct {
		k     reflect.Value
		ktext string // the key as an object key, or its JSON for list maps
	}
	var ents []entry
	kk := v.Type().Key().Kind()
	objectKeys := false
	switch kk {
	case reflect.String, reflect.Bool,
		reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		objectKeys = true
	}
	it := v.MapRange()
	for it.Next() {
		k := it.Key()
		var text string
		switch {
		case kk == reflect.String:
			text = k.String()
		case kk == reflect.Bool:
			text = strconv.FormatBool(k.Bool())
		case objectKeys && k.CanInt():
			text = strconv.FormatInt(k.Int(), 10)
		case objectKeys:
			text = strconv.FormatUint(k.Uint(), 10)
		default:
			text = e.sub(k)
		}
		ents = append(ents, entry{k, text})
	}
	sort.Slice(ents, func(i, j int) bool {
		a, b := ents[i].k, ents[j].k
		switch {
		case kk == reflect.String:
			return a.String() < b.String()
		case kk == reflect.Bool:
			return !a.Bool() && b.Bool()
		case objectKeys && a.CanInt():
			return a.Int() < b.Int()
		case objectKeys:
			return a.Uint() < b.Uint()
		}
		return ents[i].ktext < ents[j].ktext // other keys: by the key's JSON text
	})
	if objectKeys {
		e.b.WriteByte('{')
	} else {
		e.b.WriteByte('[')
	}
	for i, en := range ents {
		if i > 0 {
			e.b.WriteByte(',')
		}
		if objectKeys {
			e.str(en.ktext)
			e.b.WriteByte(':')
			e.value(v.MapIndex(en.k))
		} else {
			e.b.WriteString(`{"key":`)
			e.b.WriteString(en.ktext)
			e.b.WriteString(`,"value":`)
			e.value(v.MapIndex(en.k))
			e.b.WriteByte('}')
		}
	}
	if objectKeys {
		e.b.WriteByte('}')
	} else {
		e.b.WriteByte(']')
	}
}

type named struct {
	name string
	v    reflect.Value
}

// val wraps a value so that interface-typed variables keep their static
// interface type (reflect.ValueOf would see only the dynamic value).
func val[T any](name string, x T) named {
	return named{name, reflect.ValueOf(&x).Elem()}
}

func writeAll(vals []named, plainPath, rawPath, addrsPath string) {
	write := func(path string, raw bool) {
		if path == "" {
			return
		}
		e := encoder{raw: raw, path: map[pathKey]bool{}}
		e.b.WriteString("{\n")
		for i, nv := range vals {
			if i > 0 {
				e.b.WriteString(",\n")
			}
			e.str(nv.name)
			e.b.WriteString(": ")
			e.value(nv.v)
		}
		e.b.WriteString("\n}\n")
		must(os.WriteFile(path, e.b.Bytes(), 0o644))
	}
	write(plainPath, false)
	write(rawPath, true)
	if addrsPath != "" {
		e := encoder{}
		e.b.WriteString("{")
		n := 0
		for _, nv := range vals {
			switch nv.v.Kind() {
			case reflect.Pointer, reflect.UnsafePointer, reflect.Map, reflect.Chan, reflect.Slice:
				if nv.v.IsNil() {
					continue
				}
				if n > 0 {
					e.b.WriteString(",")
				}
				n++
				e.b.WriteString("\n")
				e.str(nv.name)
				e.b.WriteString(": ")
				e.str(hexAddr(nv.v.Pointer()))
			}
		}
		e.b.WriteString("\n}\n")
		must(os.WriteFile(addrsPath, e.b.Bytes(), 0o644))
	}
}

// ---- the captured function ----------------------------------------------

var (
	park    = make(chan struct{}) // nobody sends: capture stays parked
	written = make(chan struct{})
	paths   struct{ values, raw, addrs string }
	sink    any
)

// id launders a value through a call so the compiler cannot fold it away.
//
//go:noinline
func id[T any](x T) T { return x }

//go:noinline
func double(x int) int { return 2 * x }

//go:noinline
func capture(i8 int8, i16 int16, i32 int32, i64 int64, i int, u8 uint8, u16 uint16, u32 uint32,
	u64 uint64, u uint, uptr uintptr, f32 float32, f64 float64, c64 complex64, c128 complex128,
	b bool, s string, st S, pst *S, nilp *S, sl []int, m map[string]int, e error, a any,
	ch chan int, fn func(int) int) {

	nan := id(math.NaN())
	pinf := id(math.Inf(1))
	ninf := id(math.Inf(-1))
	negzero := id(math.Copysign(0, -1))
	f32nan := id(float32(math.NaN()))
	bad := id("ok\xff\xfebad\xc3")
	long := id(strings.Repeat("0123456789abcdef", 5000) + "END") // 80,003 bytes
	empty := id("")
	arr := id([4]int16{-1, 0, 1, math.MaxInt16})
	bytesl := id([]byte("hi\x00\xff"))
	nilsl := id([]int(nil))
	emptysl := id([]string{})
	structs := id([]Inner{{1, "one"}, {2, "two"}})
	mp := id(map[int]*Inner{1: {10, "ten"}, -5: {-50, "minus fifty"}, 3: nil})
	big := make(map[int]int)
	for k := 0; k < 5000; k++ {
		big[k*7-100] = k
	}
	big = id(big)
	mk := id(map[Point]string{{1, 2}: "a", {-3, 4}: "b", {10, 0}: "c"})
	mb := id(map[bool]string{true: "yes", false: "no"})
	mu := id(map[uint64]bool{math.MaxUint64: true, 0: false})
	// Go < 1.24 (hmap): a map mid-grow. Each insert evacuates about two old
	// buckets; at 400 entries the grow from 64 to 128 buckets has always
	// begun and never ended (checked by reading hmap on Go 1.21), so entries
	// sit in both bucket arrays.
	growing := make(map[int]int)
	for k := 0; k < 400; k++ {
		growing[k*3] = -k
	}
	growing = id(growing)
	// Keys and elems over 128 bytes are stored behind a pointer in the slot.
	bigKeys := id(map[[20]int64]string{{1}: "one", {2, 3}: "two-three", {-1}: "minus"})
	bigVals := id(map[string][40]int32{"a": {1, 2, 3}, "z": {39: 7}})
	nilmap := id(map[string]int(nil))
	emptymap := id(map[string]int{})
	base := errors.New("disk full")
	err2 := id(fmt.Errorf("write %s: %w", "/tmp/x", base))
	nilErr := id(error(nil))
	anyInt := id(any(7))
	anyStr := id(any("seven"))
	anyStruct := id(any(Inner{7, "seven"}))
	anyPtr := id(any(&Inner{8, "eight"}))
	anyNilPtr := id(any((*Inner)(nil)))
	nilIface := id(any(nil))
	closedCh := make(chan string, 3)
	closedCh <- "left"
	close(closedCh)
	closedCh = id(closedCh)
	nilCh := id(chan int(nil))
	nilFn := id((func())(nil))
	namedFn := id(double)
	k := id(3)
	closure := id(func() int { return k * 2 })
	tm := id(time.Date(2024, 2, 29, 23, 59, 58, 123456789, time.FixedZone("X", 3*3600)))
	zeroTime := id(time.Time{})
	// The compiler leaves tm and zeroTime out of DWARF; these reach the same values.
	times := id([]time.Time{tm, zeroTime})
	tptr := id(&tm)
	d := id(1500 * time.Millisecond)
	negd := id(-3*time.Hour - 25*time.Second)
	g := id(Pair[int, string]{Key: 42, Val: "answer", More: []string{"x", "y"}})
	gp := id(&Pair[string, *Node]{Key: "k"})
	n3 := &Node{Val: 3}
	ring := &Node{Val: 1, Next: &Node{Val: 2, Next: n3}}
	n3.Next = ring
	ring = id(ring)
	target := id(new(int64))
	*target = 77
	up := id(unsafe.Pointer(target))
	nilUp := id(unsafe.Pointer(nil))
	pp := id(&target)
	emptyStruct := id(struct{}{})

	writeAll([]named{
		val("i8", i8), val("i16", i16), val("i32", i32), val("i64", i64), val("i", i),
		val("u8", u8), val("u16", u16), val("u32", u32), val("u64", u64), val("u", u),
		val("uptr", uptr), val("f32", f32), val("f64", f64), val("c64", c64), val("c128", c128),
		val("b", b), val("s", s), val("st", st), val("pst", pst), val("nilp", nilp),
		val("sl", sl), val("m", m), val("e", e), val("a", a), val("ch", ch), val("fn", fn),
		val("nan", nan), val("pinf", pinf), val("ninf", ninf), val("negzero", negzero),
		val("f32nan", f32nan), val("bad", bad), val("long", long), val("empty", empty),
		val("arr", arr), val("bytesl", bytesl), val("nilsl", nilsl), val("emptysl", emptysl),
		val("structs", structs), val("mp", mp), val("big", big), val("mk", mk), val("mb", mb),
		val("mu", mu), val("growing", growing), val("bigKeys", bigKeys), val("bigVals", bigVals),
		val("nilmap", nilmap), val("emptymap", emptymap), val("err2", err2),
		val("nilErr", nilErr), val("anyInt", anyInt), val("anyStr", anyStr),
		val("anyStruct", anyStruct), val("anyPtr", anyPtr), val("anyNilPtr", anyNilPtr),
		val("nilIface", nilIface), val("closedCh", closedCh), val("nilCh", nilCh),
		val("nilFn", nilFn), val("namedFn", namedFn), val("closure", closure), val("tm", tm), val("times", times), val("tptr", tptr),
		val("zeroTime", zeroTime), val("d", d), val("negd", negd), val("g", g), val("gp", gp),
		val("ring", ring), val("up", up), val("nilUp", nilUp), val("pp", pp),
		val("emptyStruct", emptyStruct),
	}, paths.values, paths.raw, paths.addrs)
	close(written)

	<-park

	runtime.KeepAlive(i8)
	runtime.KeepAlive(i16)
	runtime.KeepAlive(i32)
	runtime.KeepAlive(i64)
	runtime.KeepAlive(i)
	runtime.KeepAlive(u8)
	runtime.KeepAlive(u16)
	runtime.KeepAlive(u32)
	runtime.KeepAlive(u64)
	runtime.KeepAlive(u)
	runtime.KeepAlive(uptr)
	runtime.KeepAlive(f32)
	runtime.KeepAlive(f64)
	runtime.KeepAlive(c64)
	runtime.KeepAlive(c128)
	runtime.KeepAlive(b)
	runtime.KeepAlive(s)
	runtime.KeepAlive(st)
	runtime.KeepAlive(pst)
	runtime.KeepAlive(nilp)
	runtime.KeepAlive(sl)
	runtime.KeepAlive(m)
	runtime.KeepAlive(e)
	runtime.KeepAlive(a)
	runtime.KeepAlive(ch)
	runtime.KeepAlive(fn)
	runtime.KeepAlive(nan)
	runtime.KeepAlive(pinf)
	runtime.KeepAlive(ninf)
	runtime.KeepAlive(negzero)
	runtime.KeepAlive(f32nan)
	runtime.KeepAlive(bad)
	runtime.KeepAlive(long)
	runtime.KeepAlive(empty)
	runtime.KeepAlive(arr)
	runtime.KeepAlive(bytesl)
	runtime.KeepAlive(nilsl)
	runtime.KeepAlive(emptysl)
	runtime.KeepAlive(structs)
	runtime.KeepAlive(mp)
	runtime.KeepAlive(big)
	runtime.KeepAlive(mk)
	runtime.KeepAlive(mb)
	runtime.KeepAlive(mu)
	runtime.KeepAlive(growing)
	runtime.KeepAlive(bigKeys)
	runtime.KeepAlive(bigVals)
	runtime.KeepAlive(nilmap)
	runtime.KeepAlive(emptymap)
	runtime.KeepAlive(err2)
	runtime.KeepAlive(nilErr)
	runtime.KeepAlive(anyInt)
	runtime.KeepAlive(anyStr)
	runtime.KeepAlive(anyStruct)
	runtime.KeepAlive(anyPtr)
	runtime.KeepAlive(anyNilPtr)
	runtime.KeepAlive(nilIface)
	runtime.KeepAlive(closedCh)
	runtime.KeepAlive(nilCh)
	runtime.KeepAlive(nilFn)
	runtime.KeepAlive(namedFn)
	runtime.KeepAlive(closure)
	runtime.KeepAlive(tm)
	runtime.KeepAlive(zeroTime)
	runtime.KeepAlive(times)
	runtime.KeepAlive(tptr)
	runtime.KeepAlive(d)
	runtime.KeepAlive(negd)
	runtime.KeepAlive(g)
	runtime.KeepAlive(gp)
	runtime.KeepAlive(ring)
	runtime.KeepAlive(up)
	runtime.KeepAlive(nilUp)
	runtime.KeepAlive(pp)
	runtime.KeepAlive(emptyStruct)
}

//go:noinline
func runCapture() {
	st := S{
		Embedded:  Embedded{E: -1},
		Embedded2: &Embedded2{F: "emb2"},
		Name:      "héllo, 世界",
		count:     3,
		Inner:     Inner{A: 5, b: "inner b"},
		P:         &Inner{A: 6, b: "pointed"},
		__private: -7,
		tags:      []string{"t1", "t2"},
		flags:     [2]bool{true, false},
	}
	pst := &S{Name: "pointed S", Inner: Inner{A: 1}}
	ch := make(chan int, 4)
	ch <- 1
	ch <- 2
	ch <- 3
	capture(math.MinInt8, math.MinInt16, math.MinInt32, math.MinInt64, -42,
		math.MaxUint8, math.MaxUint16, math.MaxUint32, math.MaxUint64, 12345, 0xdeadbeef,
		float32(0.1), 3.141592653589793, complex(1.5, -2.25), complex(-1e300, 1e-300),
		true, "plain ascii, then ünïcödé ✓ 🙂", st, pst, nil,
		[]int{3, 1, 4, 1, 5, 9, 2, 6}, map[string]int{"one": 1, "two": 2, "": 0, "ünï": -1},
		errors.New("boom"), any(int64(-9)), ch, double)
}

// ---- protocol -----------------------------------------------------------

func must(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "values:", err)
		os.Exit(2)
	}
}

func exitTimeout() { os.Exit(3) }

//go:noinline
func watchStdin() {
	io.Copy(io.Discard, os.Stdin)
	os.Exit(0)
}

func checkHchan() {
	c := make(chan int, 2)
	c <- 1
	h := (*hchanHead)(unsafe.Pointer(reflect.ValueOf(c).Pointer()))
	if h.qcount != 1 || h.dataqsiz != 2 || h.closed != 0 {
		panic("values: runtime.hchan layout changed")
	}
	close(c)
	if h.closed == 0 {
		panic("values: runtime.hchan layout changed (closed)")
	}
}

func main() {
	flag.StringVar(&paths.values, "values", "", "write the plain JSON oracle here")
	flag.StringVar(&paths.raw, "raw", "", "write the raw JSON oracle here")
	flag.StringVar(&paths.addrs, "addrs", "", "write the addresses of pointer-like roots here")
	dumpPath := flag.String("dump", "", "where SIGUSR1 writes runtime.Stack(all)")
	timeout := flag.Duration("timeout", 10*time.Minute, "exit after this long")
	flag.Parse()
	time.AfterFunc(*timeout, exitTimeout)
	checkHchan()
	go watchStdin()
	sigc := make(chan os.Signal, 1)
	signal.Notify(sigc, syscall.SIGUSR1)

	go runCapture()
	<-written
	time.Sleep(100 * time.Millisecond)
	out := bufio.NewWriter(os.Stdout)
	fmt.Fprintf(out, "READY pid=%d\n", os.Getpid())
	out.Flush()
	for range sigc {
		if *dumpPath != "" {
			buf := make([]byte, 1<<20)
			for {
				n := runtime.Stack(buf, true)
				if n < len(buf) {
					buf = buf[:n]
					break
				}
				buf = make([]byte, 2*len(buf))
			}
			must(os.WriteFile(*dumpPath, buf, 0o644))
		}
		fmt.Fprintln(out, "DUMPED")
		out.Flush()
	}
}
