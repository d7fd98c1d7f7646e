// Ex-Ray's value decoder as a WebAssembly module (agent/wasm/decoder.py runs
// it under wasmtime with fuel and a memory limit). Freestanding C: no libc,
// compiled once with clang --target=wasm32 (scripts/build_wasm.sh); the
// .wasm is checked in beside this file.
//
// It is a fixed interpreter, not generated per spec: the types it decodes
// come in as data (a type table built from the plan's TypeTable), with the
// value's own bytes, the memory image the pause copied (sorted disjoint
// ranges), the budgets, and what the frame's and the snapshot's byte budgets
// have left. It writes the value as JSON text, mirroring
// probe_compiler/decode.py (the reference) rule for rule: bool, int, uint,
// float, complex, string, pointer, unsafe.Pointer, struct, array, slice,
// interface (with the message of a known error type), channel, func (named
// from a pc table the agent fills), map (swiss tables and hmap buckets, the
// layout as data), time.Time, time.Duration and unknown (raw bytes). What it
// cannot answer alone (an interface's dynamic type or a func's pc its tables
// lack, a list map whose keys hold floats) ends with ST_UNSUPPORTED, and the
// agent learns the type or name and asks again, or decodes that value in Python.
//
// Nothing in the input is trusted: every offset and length is checked
// against the input's size, recursion is bounded, and the output has a cap.
// A violation ends with ST_MALFORMED and a message; fuel bounds the time.

typedef unsigned char u8;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef long long i64;

#define ST_OK 0
#define ST_UNSUPPORTED 1
#define ST_MALFORMED 2
#define ST_OUTPUT 3
#define ST_SKIPPED 4             // a batch's chained value after one that was not decoded: not tried

// Kinds as agent/wasm/decoder.py numbers them.
enum { K_BOOL = 1, K_INT, K_UINT, K_STRING, K_POINTER, K_UNSAFE_POINTER, K_STRUCT, K_ARRAY,
       K_SLICE, K_UNKNOWN, K_OTHER, K_IFACE, K_CHAN, K_FLOAT, K_COMPLEX, K_MAP, K_FUNC, K_TIME,
       K_DURATION };
#define KIND_MASK 0xFF
#define T_DIRECT 0x100           // an interface holds this type in its data word (IsDirectIface)
#define T_NAMED_ERROR 0x200      // decode.ERROR_MESSAGE_FIELD names it: the message field (w2) is added
#define T_JOIN_ERROR 0x400       // *errors.joinError: its errs' messages joined are added

#define EAGER_BYTES 4096
#define MAX_NEST 200             // C recursion: far past any depth budget
#define MAX_PATH 64              // pointers on the current path (the depth budget is below it)

extern u8 __heap_base;

// The compiler calls these for struct copies; there is no libc.
void *memcpy(void *d, const void *s, unsigned long n) {
    u8 *o = (u8 *)d; const u8 *i = (const u8 *)s;
    if (!(((unsigned long)d | (unsigned long)s) & 7))
        for (; n >= 8; n -= 8, o += 8, i += 8) *(u64 *)o = *(const u64 *)i;
    while (n--) *o++ = *i++;
    return d;
}

void *memset(void *d, int v, unsigned long n) {
    u8 *o = (u8 *)d;
    if (!((unsigned long)d & 7)) {
        u64 w = (u8)v * 0x0101010101010101ULL;
        for (; n >= 8; n -= 8, o += 8) *(u64 *)o = w;
    }
    while (n--) *o++ = (u8)v;
    return d;
}

static u8 *in;                   // the input, as the agent wrote it
static u32 in_len;
static u8 *out;                  // the output buffer
static u32 out_len, out_cap;
static u32 status;
static u32 refused;              // a read the frame's (1) or the snapshot's (2) budget refused
static const char *why;          // ST_MALFORMED / ST_UNSUPPORTED: what
static u64 why_arg;

// The header, parsed.
static u32 string_bytes, elements, depth_budget, raw_mode;
static u64 frame_left, snapshot_left, used;
static u32 ntypes, types_off, nfields_total, fields_off, names_off, names_len;
static u32 nranges, ranges_off, bytes_off, bytes_len;
static u32 nrtypes, rtypes_off;   // (runtime type address, type id) records, sorted by address
static u32 nfuncs, funcs_off, fnames_off, fnames_len;   // (pc, name) records, sorted by pc

// Funcs whose pc the func table lacks: the decode goes on (each written as
// null) and ends Unsupported with their pcs; the agent names them and asks again.
#define MAX_MISSING 64
static u64 missing[MAX_MISSING];
static u32 nmissing;

// -- memory management: one region for input and output, grown on request

static u32 heap_end;
static u32 scratch_top;          // a stack of scratch space after the output (maps' sets and sorts)

static u32 pages(void) { return __builtin_wasm_memory_size(0); }

static int ensure(u32 end) {
    u32 have = pages() * 65536u;
    if (end <= have)
        return 1;
    u32 need = (end - have + 65535u) / 65536u;
    return __builtin_wasm_memory_grow(0, need) != (unsigned long)-1;
}

// The agent asks for room for an input of n bytes (and an output buffer of
// out_n bytes after it); returns where to write the input, 0 if refused.
__attribute__((export_name("prepare")))
u32 prepare(u32 n, u32 out_n) {
    u32 base = ((u32)(unsigned long)&__heap_base + 15u) & ~15u;
    if (n > 0x40000000u || out_n > 0x40000000u)
        return 0;
    u32 end = base + n + 16 + out_n;
    if (end < base || !ensure(end))
        return 0;
    in = (u8 *)(unsigned long)base;
    in_len = n;
    out = in + ((n + 15u) & ~15u);
    out_cap = out_n;
    heap_end = end;
    scratch_top = (end + 15u) & ~15u;
    return base;
}

__attribute__((export_name("output_ptr"))) u32 output_ptr(void) { return (u32)(unsigned long)out; }
__attribute__((export_name("output_len"))) u32 output_len(void) { return out_len; }
__attribute__((export_name("bytes_used"))) u64 bytes_used(void) { return used; }
__attribute__((export_name("why_ptr"))) u32 why_ptr(void) { return (u32)(unsigned long)why; }
__attribute__((export_name("why_arg"))) u64 why_argument(void) { return why_arg; }
__attribute__((export_name("missing_ptr"))) u32 missing_ptr(void) { return (u32)(unsigned long)missing; }
__attribute__((export_name("missing_count"))) u32 missing_count(void) { return nmissing; }

// Scratch space above everything else, taken and given back in stack order;
// 0 when the memory limit refuses it (the value then ends ST_OUTPUT).
static u8 *scratch(u32 n) {
    u32 at = scratch_top, end = at + ((n + 15u) & ~15u);
    if (end < at || !ensure(end)) { status = ST_OUTPUT; why = "the module's memory limit (scratch space)"; return 0; }
    scratch_top = end;
    return (u8 *)(unsigned long)at;
}

// -- checked input access

static int in_ok(u64 off, u64 n) { return off <= in_len && n <= in_len - off; }

static u32 rd32(u32 off) {
    if (!in_ok(off, 4)) { status = ST_MALFORMED; why = "input too short"; return 0; }
    return (u32)in[off] | (u32)in[off + 1] << 8 | (u32)in[off + 2] << 16 | (u32)in[off + 3] << 24;
}

static u64 rd64(u32 off) { return (u64)rd32(off) | (u64)rd32(off + 4) << 32; }

static u64 le(const u8 *b, u32 n) {
    u64 v = 0;
    for (u32 i = 0; i < n && i < 8; i++)
        v |= (u64)b[i] << (8 * i);
    return v;
}

// -- output

static int put(const char *s, u32 n) {
    if (out_len + n < out_len || out_len + n > out_cap) {
        status = ST_OUTPUT;
        why = "output larger than its cap";
        return 0;
    }
    for (u32 i = 0; i < n; i++)
        out[out_len + i] = (u8)s[i];
    out_len += n;
    return 1;
}

static int same(const u8 *a, const char *b, u32 n) {
    for (u32 i = 0; i < n; i++)
        if (a[i] != (u8)b[i]) return 0;
    return 1;
}

static u32 slen(const char *s) { u32 n = 0; while (s[n]) n++; return n; }
static void puts_(const char *s) { put(s, slen(s)); }

static void put_u64(u64 v) {
    char b[24]; int i = 24;
    do { b[--i] = (char)('0' + v % 10); v /= 10; } while (v);
    put(b + i, 24 - i);
}

static void put_i64(i64 v) {
    if (v < 0) { put("-", 1); put_u64((u64)0 - (u64)v); } else put_u64((u64)v);
}

static void put_hex(u64 v) {          // as Python's hex(): 0x1f
    char b[18]; int i = 18;
    do { b[--i] = "0123456789abcdef"[v & 15]; v >>= 4; } while (v);
    b[--i] = 'x'; b[--i] = '0';
    put(b + i, 18 - i);
}

static void put_utf8(u32 c) {
    char b[4];
    if (c < 0x80) { b[0] = (char)c; put(b, 1); }
    else if (c < 0x800) { b[0] = (char)(0xC0 | c >> 6); b[1] = (char)(0x80 | (c & 63)); put(b, 2); }
    else if (c < 0x10000) { b[0] = (char)(0xE0 | c >> 12); b[1] = (char)(0x80 | (c >> 6 & 63));
                            b[2] = (char)(0x80 | (c & 63)); put(b, 3); }
    else { b[0] = (char)(0xF0 | c >> 18); b[1] = (char)(0x80 | (c >> 12 & 63));
           b[2] = (char)(0x80 | (c >> 6 & 63)); b[3] = (char)(0x80 | (c & 63)); put(b, 4); }
}

// One rune of b[0..n) as Go's utf8.DecodeRune: (rune, size); an invalid
// byte is (U+FFFD, 1), which is what decode.go_string makes of it.
static u32 rune(const u8 *b, u32 n, u32 *size) {
    u32 c = b[0];
    *size = 1;
    if (c < 0x80) return c;
    u32 need = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC2 ? 2 : 0;
    if (!need || c > 0xF4 || need > n) return 0xFFFD;
    u32 r = c & (need == 2 ? 0x1F : need == 3 ? 0x0F : 0x07);
    for (u32 i = 1; i < need; i++) {
        if ((b[i] & 0xC0) != 0x80) return 0xFFFD;
        r = r << 6 | (b[i] & 63);
    }
    if ((need == 3 && (r < 0x800 || (r >= 0xD800 && r <= 0xDFFF))) || (need == 4 && (r < 0x10000 || r > 0x10FFFF)))
        return 0xFFFD;
    *size = need;
    return r;
}

static void put_jstring(const u8 *b, u32 n) {
    put("\"", 1);
    for (u32 i = 0; i < n && status == ST_OK;) {
        u32 sz;
        u32 c = rune(b + i, n - i, &sz);
        i += sz;
        if (c == '"') put("\\\"", 2);
        else if (c == '\\') put("\\\\", 2);
        else if (c == '\n') put("\\n", 2);       // json.dumps' escapes: a list map sorts by that text
        else if (c == '\r') put("\\r", 2);
        else if (c == '\t') put("\\t", 2);
        else if (c == '\b') put("\\b", 2);
        else if (c == '\f') put("\\f", 2);
        else if (c < 0x20) {
            char e[6] = {'\\', 'u', '0', '0', "0123456789abcdef"[c >> 4], "0123456789abcdef"[c & 15]};
            put(e, 6);
        } else put_utf8(c);
    }
    put("\"", 1);
}

// Drops a multi-byte sequence the cut split (decode.cut_at_rune).
static u32 cut_at_rune(const u8 *b, u32 n) {
    for (u32 back = 1; back <= 4 && back <= n; back++) {
        u8 c = b[n - back];
        if ((c & 0xC0) == 0x80) continue;
        u32 need = c < 0xC0 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
        return need > back ? n - back : n;
    }
    return n;
}

// -- types

typedef struct {
    u32 id, kind, tflags;
    u32 w0, w1, w2;      // the records' last three words as written (map: w2 is the key type)
    u64 size;
    u32 elem;            // ~0: none
    u64 length;
    u32 name_off, name_len;
    u32 nfields, first_field;
    u32 f0_off, f0_size, f1_off, f1_size;   // string: str, len; slice: array, len
} Type;

#define TYPE_REC 56
#define FIELD_REC 24

static int type_at(u32 i, Type *t) {
    u32 o = types_off + i * TYPE_REC;
    if (i >= ntypes || !in_ok(o, TYPE_REC)) return 0;
    t->id = rd32(o); t->kind = rd32(o + 4) & KIND_MASK; t->tflags = rd32(o + 4) & ~KIND_MASK;
    t->size = rd64(o + 8); t->elem = rd32(o + 16);
    t->length = rd64(o + 20); t->name_off = rd32(o + 28); t->name_len = rd32(o + 32);
    t->nfields = rd32(o + 36); t->first_field = rd32(o + 40);
    t->f0_off = rd32(o + 44) & 0xFFFF; t->f0_size = rd32(o + 44) >> 16;
    t->f1_off = rd32(o + 48) & 0xFFFF; t->f1_size = rd32(o + 48) >> 16;
    t->w0 = rd32(o + 44); t->w1 = rd32(o + 48); t->w2 = rd32(o + 52);
    return status == ST_OK;
}

// Types looked up lately (a map's thousand entries are two types): reset for every value.
#define TCACHE 64
static Type tcache[TCACHE];
static u32 tcache_ok[TCACHE];
static u32 tcache_gen = 1;

static int find_type_slow(u32 id, Type *t);

static int find_type(u32 id, Type *t) {
    u32 h = (id * 2654435761u) >> 26;
    if (tcache_ok[h] == tcache_gen && tcache[h].id == id) { *t = tcache[h]; return 1; }
    if (!find_type_slow(id, t)) return 0;
    tcache[h] = *t; tcache_ok[h] = tcache_gen;
    return 1;
}

static int find_type_slow(u32 id, Type *t) {      // the table is sorted by id
    u32 lo = 0, hi = ntypes;
    while (lo < hi) {
        u32 mid = lo + (hi - lo) / 2;
        u32 o = types_off + mid * TYPE_REC;
        if (!in_ok(o, 4)) return 0;
        u32 got = rd32(o);
        if (got == id) return type_at(mid, t);
        if (got < id) lo = mid + 1; else hi = mid;
    }
    return 0;
}

static const u8 *name_of(Type *t, u32 *n) {
    if (!in_ok((u64)names_off + t->name_off, t->name_len) || t->name_off > names_len) { *n = 0; return in; }
    *n = t->name_len;
    return in + names_off + t->name_off;
}

// The type id of the runtime type at `rtype` (an interface's dynamic type);
// 0 with why_arg = rtype when the table lacks it: the agent learns it and asks again.
static int find_rtype(u64 rtype, u32 *tid) {
    u32 lo = 0, hi = nrtypes;
    while (lo < hi) {
        u32 mid = lo + (hi - lo) / 2;
        u64 got = rd64(rtypes_off + mid * 16);
        if (got == rtype) { *tid = rd32(rtypes_off + mid * 16 + 8); return status == ST_OK; }
        if (got < rtype) lo = mid + 1; else hi = mid;
    }
    return 0;
}

// -- memory image and budgets

#define R_OK 0
#define R_UNREADABLE 1
#define R_BUDGET 2
#define R_MALFORMED 3

typedef struct { u32 code; u64 addr, n; const char *msg; } Fail;

// n bytes at addr from the copies, charged to the budgets first (as
// _Decoder.read: a read that fails still spent its budget).
static const u8 *mem(u64 addr, u64 n, Fail *f) {
    if (n == 0) return in;
    if (n > frame_left || n > snapshot_left) {    // ByteBudget.refused: the snapshot says it was cut
        refused |= (n > frame_left ? 1u : 0u) | (n > snapshot_left ? 2u : 0u);
        f->code = R_BUDGET;
        return 0;
    }
    frame_left -= n; snapshot_left -= n; used += n;
    u32 lo = 0, hi = nranges;
    while (lo < hi) {                      // the last range starting at or below addr
        u32 mid = lo + (hi - lo) / 2;
        if (rd64(ranges_off + mid * 24) <= addr) lo = mid + 1; else hi = mid;
    }
    if (lo > 0 && status == ST_OK) {
        u32 o = ranges_off + (lo - 1) * 24;
        u64 start = rd64(o), len = rd64(o + 8), base = rd64(o + 16);
        if (addr - start <= len && n <= len - (addr - start) && base + len <= bytes_len &&
            in_ok((u64)bytes_off + base, len))
            return in + bytes_off + base + (addr - start);
    }
    f->code = R_UNREADABLE; f->addr = addr; f->n = n;
    return 0;
}

// -- the decoder: value() mirrors _Decoder.value, one function per kind

static u64 path_addr[MAX_PATH];
static u32 path_type[MAX_PATH];
static u32 path_n;
static u32 nest;

static void value(u32 tid, const u8 *data, u64 dlen, u64 addr, int has_addr, u32 depth);

// The value's own bytes: the ones given, else read at its address.
static const u8 *own(Type *t, const u8 *data, u64 dlen, u64 addr, int has_addr, Fail *f) {
    if (data) {
        if (dlen < t->size) { f->code = R_MALFORMED; f->msg = "bytes given, fewer than needed"; return 0; }
        return data;
    }
    if (!has_addr) { f->code = R_MALFORMED; f->msg = "the value has no location"; return 0; }
    return mem(addr, t->size, f);
}

static void depth_marker(u64 p) {
    puts_("{\"__truncated\":\"depth\",\"__addr\":"); put_u64(p); puts_("}");
}

// indirect(): the depth budget, then cycle detection by (address, type) on the path.
// Returns 1 when the caller decodes (and must pop), 0 when a marker was written.
static int push(u64 p, u32 tid, u32 depth) {
    if (depth >= depth_budget) { depth_marker(p); return 0; }
    for (u32 i = 0; i < path_n; i++)
        if (path_addr[i] == p && path_type[i] == tid) {
            puts_("{\"__cycle\":\""); put_hex(p); puts_("\"}"); return 0;
        }
    if (path_n >= MAX_PATH) { status = ST_UNSUPPORTED; why = "pointer path deeper than the module's"; return 0; }
    path_addr[path_n] = p; path_type[path_n] = tid; path_n++;
    return 1;
}

static void run(u32 elem_id, const u8 *data, u64 dlen, u64 base, int has_base, u64 n, u32 depth, Fail *f) {
    Type e;
    if (!find_type(elem_id, &e)) { f->code = R_MALFORMED; f->msg = "element type is not in the type table"; return; }
    u64 count = n < elements ? n : elements;
    if (!data && has_base && count && e.size && count <= EAGER_BYTES / e.size) {
        data = mem(base, count * e.size, f);
        if (!data) return;
        dlen = count * e.size;
    }
    puts_("[");
    for (u64 i = 0; i < count && status == ST_OK; i++) {
        if (i) puts_(",");
        u64 off = i * e.size;
        const u8 *sub = 0; u64 slen_ = 0;
        if (data) { sub = off <= dlen ? data + off : data + dlen; slen_ = off <= dlen ? (dlen - off < e.size ? dlen - off : e.size) : 0; }
        value(elem_id, sub, slen_, base + off, has_base, depth);
    }
    if (n > count) { puts_(count ? ",{\"__truncated\":\"elements\",\"len\":" : "{\"__truncated\":\"elements\",\"len\":"); put_u64(n); puts_("}"); }
    puts_("]");
}

// -- floats (decode._float_json): exact decimal digits from big integers

#define BIG 96
typedef struct { u32 n; u32 d[BIG]; } Big;     // little-endian 32-bit limbs, no leading zero limb

static void big_set(Big *b, u64 v) { b->n = 0; while (v) { b->d[b->n++] = (u32)v; v >>= 32; } }

static void big_mul(Big *b, u32 m) {
    u64 c = 0;
    for (u32 i = 0; i < b->n; i++) { u64 t = (u64)b->d[i] * m + c; b->d[i] = (u32)t; c = t >> 32; }
    if (c && b->n < BIG) b->d[b->n++] = (u32)c;
}

static void big_pow5(Big *b, u32 n) {
    static const u32 p5[13] = {1, 5, 25, 125, 625, 3125, 15625, 78125, 390625, 1953125, 9765625,
                               48828125, 244140625};
    for (; n >= 13; n -= 13) big_mul(b, 1220703125u);
    big_mul(b, p5[n]);
}

static void big_shl(Big *b, u32 s) {
    if (!b->n) return;
    u32 w = s / 32, r = s % 32;
    if (b->n + w + 1 > BIG) { b->n = 0; return; }     // not reached: floats need at most 80 limbs
    if (r) {
        u32 c = 0;
        for (u32 i = 0; i < b->n; i++) { u32 v = b->d[i]; b->d[i] = v << r | c; c = v >> (32 - r); }
        if (c) b->d[b->n++] = c;
    }
    if (w) {
        for (u32 i = b->n; i-- > 0;) b->d[i + w] = b->d[i];
        for (u32 i = 0; i < w; i++) b->d[i] = 0;
        b->n += w;
    }
}

static void big_shr(Big *b, u32 s, int *sticky) {   // b >>= s; *sticky: a one bit was shifted out
    u32 w = s / 32, r = s % 32;
    if (w >= b->n) { *sticky = b->n != 0; b->n = 0; return; }
    *sticky = 0;
    for (u32 i = 0; i < w; i++) *sticky |= b->d[i] != 0;
    if (r) *sticky |= (b->d[w] & ((1u << r) - 1)) != 0;
    for (u32 i = 0; i + w < b->n; i++) {
        u64 v = b->d[i + w] >> r;
        if (r && i + w + 1 < b->n) v |= (u64)b->d[i + w + 1] << (32 - r);
        b->d[i] = (u32)v;
    }
    b->n -= w;
    while (b->n && !b->d[b->n - 1]) b->n--;
}

static u32 big_div(Big *b, u32 v) {                 // b /= v; the remainder
    u64 r = 0;
    for (u32 i = b->n; i-- > 0;) { u64 cur = r << 32 | b->d[i]; b->d[i] = (u32)(cur / v); r = cur % v; }
    while (b->n && !b->d[b->n - 1]) b->n--;
    return (u32)r;
}

static int big_cmp(const Big *a, const Big *b) {
    if (a->n != b->n) return a->n < b->n ? -1 : 1;
    for (u32 i = a->n; i-- > 0;)
        if (a->d[i] != b->d[i]) return a->d[i] < b->d[i] ? -1 : 1;
    return 0;
}

static void big_sub(Big *a, const Big *b) {         // a -= b, a >= b
    u64 borrow = 0;
    for (u32 i = 0; i < a->n; i++) {
        u64 bi = (i < b->n ? b->d[i] : 0) + borrow, ai = a->d[i];
        a->d[i] = (u32)(ai - bi);
        borrow = ai < bi;
    }
    while (a->n && !a->d[a->n - 1]) a->n--;
}

static u32 big_bits(const Big *b) { return b->n ? (b->n - 1) * 32 + 32 - (u32)__builtin_clz(b->d[b->n - 1]) : 0; }
static u32 big_bit(const Big *b, u32 i) { return i / 32 < b->n ? (b->d[i / 32] >> (i % 32)) & 1 : 0; }

static char dg[800];                                // the exact digits of one float

// The decimal digits of m * 2^e (m > 0) into dg; *X: the value is d.ddd × 10^X.
// Exact for an integer; for a fraction, the first 21 or more digits exactly
// and then a 1 if anything nonzero follows: all that rounding to 17 looks at.
static u32 exact_digits(u64 m, int e, int *X) {
    Big b;
    big_set(&b, m);
    int dexp = 0, sticky = 0;
    if (e >= 0) big_shl(&b, (u32)e);
    else {                                          // floor(m × 10^k / 2^-e), k for 21..23 digits
        int bl = 64 - __builtin_clzll(m), l2 = bl + e - 1;
        int x10 = l2 >= 0 ? (l2 * 78913) >> 18 : -((-l2 * 78913 + (1 << 18) - 1) >> 18);
        int k = 21 - x10;
        if (k < 0) k = 0;
        big_pow5(&b, (u32)k);
        if (k >= -e) big_shl(&b, (u32)(k + e));
        else big_shr(&b, (u32)(-e - k), &sticky);
        dexp = -k;
    }
    u32 chunk[96], nc = 0;
    while (b.n && nc < 96) chunk[nc++] = big_div(&b, 1000000000u);
    u32 n = 0;
    for (u32 c = nc; c-- > 0;) {
        char t[9];
        u32 v = chunk[c];
        for (int i = 8; i >= 0; i--) { t[i] = (char)('0' + v % 10); v /= 10; }
        u32 i = 0;
        if (c == nc - 1) while (i < 8 && t[i] == '0') i++;
        for (; i < 9; i++) dg[n++] = t[i];
    }
    if (sticky) { dg[n++] = '1'; dexp--; }
    *X = (int)n - 1 + dexp;
    return n;
}

// dg[0..n) rounded half-even to p digits into r (Python's correctly rounded
// '%.{p}g'), trailing zeros dropped; *X is moved on a carry out of the top.
static u32 round_mode(u32 n, u32 p, char *r, int *X, int mode);

static u32 round_digits(u32 n, u32 p, char *r, int *X) { return round_mode(n, p, r, X, 0); }

// mode 0: half-even; 1: toward zero; 2: away from zero (when anything nonzero is dropped).
static u32 round_mode(u32 n, u32 p, char *r, int *X, int mode) {
    u32 k = n < p ? n : p;
    for (u32 i = 0; i < k; i++) r[i] = dg[i];
    if (n > p) {
        int up = dg[p] > '5';
        if (dg[p] == '5') {
            up = (dg[p - 1] - '0') & 1;
            for (u32 i = p + 1; i < n && !up; i++) up = dg[i] != '0';
        }
        if (mode) {
            int any = 0;
            for (u32 i = p; i < n && !any; i++) any = dg[i] != '0';
            up = mode == 2 && any;
        }
        if (up) {
            int i = (int)p - 1;
            while (i >= 0 && r[i] == '9') r[i--] = '0';
            if (i < 0) { r[0] = '1'; (*X)++; } else r[i]++;
        }
    }
    while (k > 1 && r[k - 1] == '0') k--;
    return k;
}

typedef union { u64 u; double d; } F64;
typedef union { u32 u; float f; } F32;

// Q (55 bits) × 2^E, and whether bits below Q were set, rounded half-even to a double.
// (Subnormals round at 2^-1074, as IEEE reading does; past the largest is infinity.)
static double mk_double(u64 Q, int sticky, int E) {
    int shift = 2;
    if (-1074 - E > shift) shift = -1074 - E;
    F64 v;
    v.u = 0;
    if (shift > 56) return v.d;
    u64 low = Q & ((1ULL << shift) - 1), half = 1ULL << (shift - 1);
    Q >>= shift; E += shift;
    if (low > half || (low == half && (sticky || (Q & 1)))) Q++;
    if (Q >> 53) { Q >>= 1; E++; }
    int be = E + 52 + 1023;
    if (Q < (1ULL << 52)) v.u = Q;                       // subnormal: E is -1074
    else v.u = be >= 2047 ? 0x7FF0000000000000ULL : (u64)be << 52 | (Q & ((1ULL << 52) - 1));
    return v.d;
}

// The double nearest D × 10^q (D > 0): what Python's float() makes of the digits.
static double parse_dec(u64 D, int q) {
    Big b;
    big_set(&b, D);
    if (q >= 0) {
        big_pow5(&b, (u32)q);
        big_shl(&b, (u32)q);
        u32 L = big_bits(&b);
        u64 Q = 0;
        int sticky = 0;
        for (u32 i = 0; i < 55; i++) Q = Q << 1 | (L >= i + 1 ? big_bit(&b, L - 1 - i) : 0);
        for (u32 i = 0; L > 55 && i < L - 55 && !sticky; i++) sticky = (int)big_bit(&b, i);
        return mk_double(Q, sticky, (int)L - 55);
    }
    Big v;
    big_set(&v, 1);
    big_pow5(&v, (u32)-q);                          // D / 10^r = D / 5^r × 2^-r
    int s = (int)big_bits(&v) - (int)big_bits(&b);  // D × 2^s / 5^r in [1, 2)
    if (s > 0) big_shl(&b, (u32)s); else if (s < 0) big_shl(&v, (u32)-s);
    if (big_cmp(&b, &v) < 0) { big_shl(&b, 1); s++; }
    u64 Q = 0;
    for (int i = 0; i < 55; i++) {
        Q <<= 1;
        if (big_cmp(&b, &v) >= 0) { big_sub(&b, &v); Q |= 1; }
        big_shl(&b, 1);
    }
    return mk_double(Q, b.n != 0, q - (s + 54));
}

static u32 nfloats;              // floats written (a list map's key holding one goes to Python)

// Digits r[0..k) × 10^(X-k+1) as a JSON number that Python reads as a float.
static void put_digits(const char *r, u32 k, int X, int neg) {
    if (neg) put("-", 1);
    if (X >= -5 && X < 17) {
        if (X >= 0) {
            for (int i = 0; i <= X; i++) put(i < (int)k ? r + i : "0", 1);
            put(".", 1);
            if ((int)k > X + 1) put(r + X + 1, k - (u32)X - 1); else put("0", 1);
        } else {
            put("0.", 2);
            for (int i = -1; i > X; i--) put("0", 1);
            put(r, k);
        }
    } else {
        put(r, 1);
        if (k > 1) { put(".", 1); put(r + 1, k - 1); }
        put("e", 1);
        put_i64(X);
    }
}

static void put_pad(u64 v, int w);

// The bounds of the decimals that read back as x (the midpoints to its
// neighbours; inclusive when its mantissa is even, as reading rounds ties to
// even): their first 24 digits and whether anything nonzero follows.
typedef struct { char d[25]; u32 n; int X; } Bound;
static Bound blo, bhi;
static int b_even;

static void bound(Bound *b, u64 m, int e) {
    u32 n = exact_digits(m, e, &b->X), k = n < 24 ? n : 24;
    for (u32 i = 0; i < k; i++) b->d[i] = dg[i];
    int more = 0;
    for (u32 i = 24; i < n && !more; i++) more = dg[i] != '0';
    if (more) b->d[k++] = '1';         // stands for the rest: c has at most 17 digits
    b->n = k;
}

static int cmp_bound(const char *r, u32 k, int X, const Bound *b) {
    if (X != b->X) return X < b->X ? -1 : 1;
    for (u32 i = 0; i < k || i < b->n; i++) {
        char x = i < k ? r[i] : '0', y = i < b->n ? b->d[i] : '0';
        if (x != y) return x < y ? -1 : 1;
    }
    return 0;
}

static int reads_back_as_x(const char *r, u32 k, int X) {
    int lo = cmp_bound(r, k, X, &blo), hi = cmp_bound(r, k, X, &bhi);
    return (lo > 0 || (lo == 0 && b_even)) && (hi < 0 || (hi == 0 && b_even));
}

// p digits that read back as x (the nearest p-digit decimal, else the one on
// the other side of it), or 0: the digits in r, *Xp their exponent.
static u32 digits_that_read_back(u32 n, int X, u32 p, char *r, int *Xp) {
    char t[20];
    int Xt = X, Xn = X;
    u32 kn = round_digits(n, p, r, &Xn);
    u32 kt = round_mode(n, p, t, &Xt, 1);
    int near_up = !(kn == kt && Xn == Xt && same((const u8 *)r, t, kn));
    *Xp = Xn;
    if (reads_back_as_x(r, kn, Xn)) return kn;
    *Xp = X;
    u32 k = round_mode(n, p, r, Xp, near_up ? 1 : 2);
    return reads_back_as_x(r, k, *Xp) ? k : 0;
}

// repr(x) of a positive finite double: the fewest digits that read back as
// it (the nearest such), Python's float_repr_style 'short'. The digits that
// read back grow with p, so p is found by halving [1, 17].
static u32 shortest(u64 bits, char *r, int *Xo) {
    u64 man = bits & ((1ULL << 52) - 1);
    u32 ex = (u32)(bits >> 52) & 0x7FF;
    u64 m = ex ? man | 1ULL << 52 : man;
    int e = (ex ? (int)ex : 1) - 1075;
    b_even = !(m & 1);
    if (!man && ex > 1) bound(&blo, 4 * m - 1, e - 2);    // below a power of two the gap is half
    else bound(&blo, 2 * m - 1, e - 1);
    bound(&bhi, 2 * m + 1, e - 1);
    int X;
    u32 n = exact_digits(m, e, &X);
    u32 lo = 1, hi = 17;
    char t[20];
    int Xt;
    while (lo < hi) {
        u32 mid = (lo + hi) / 2;
        if (digits_that_read_back(n, X, mid, t, &Xt)) hi = mid; else lo = mid + 1;
    }
    u32 k = digits_that_read_back(n, X, lo, r, Xo);
    if (!k) { *Xo = X; k = round_digits(n, 17, r, Xo); }   // not reached: 17 digits always read back
    return k;
}

// Python's repr of the double: fixed from 1e-4 to below 1e16, else d.ddde±XX.
static void put_repr(u64 bits) {
    int neg = (int)(bits >> 63);
    bits &= ~(1ULL << 63);
    if (!bits) { puts_(neg ? "-0.0" : "0.0"); return; }
    char r[20];
    int X;
    u32 k = shortest(bits, r, &X);
    if (X >= -4 && X < 16) { put_digits(r, k, X, neg); return; }
    if (neg) put("-", 1);
    put(r, 1);
    if (k > 1) { put(".", 1); put(r + 1, k - 1); }
    put(X < 0 ? "e-" : "e+", 2);
    put_pad((u64)(X < 0 ? -X : X), 2);
}

static u32 in_key;               // inside a map key: floats as Python's repr (a list map sorts by it)

// A float32 (single) or float64 as decode._float_json gives it: NaN and the
// infinities as strings; a float32 as the shortest of 6..9 digits that is the
// same float32; a float64 exactly (17 digits read back as the same double).
static void put_float(u64 bits, int single) {
    u32 ebits = single ? 8 : 11, mbits = single ? 23 : 52;
    u64 man = bits & ((1ULL << mbits) - 1);
    u32 ex = (u32)(bits >> mbits) & ((1u << ebits) - 1);
    int neg = (int)(bits >> (mbits + ebits)) & 1;
    nfloats++;
    if (ex == (1u << ebits) - 1) { puts_(man ? "\"NaN\"" : neg ? "\"-Inf\"" : "\"+Inf\""); return; }
    if (!ex && !man) { puts_(neg ? "-0.0" : "0.0"); return; }
    int bias = single ? 127 : 1023;
    u64 m = ex ? man | 1ULL << mbits : man;
    int e = (ex ? (int)ex : 1) - bias - (int)mbits;
    int X;
    u32 n = exact_digits(m, e, &X);
    char r[20];
    if (single) {
        for (u32 p = 6; p <= 9; p++) {
            int Xp = X;
            u32 k = round_digits(n, p, r, &Xp);
            u64 D = 0;
            for (u32 i = 0; i < k; i++) D = D * 10 + (u64)(r[i] - '0');
            F32 z;
            F64 y;
            y.d = parse_dec(D, Xp - (int)(k - 1));
            z.f = (float)y.d;
            if ((z.u & 0x7FFFFFFFu) == (u32)(bits & 0x7FFFFFFFu)) {
                if (in_key) put_repr(y.u | (u64)neg << 63); else put_digits(r, k, Xp, neg);
                return;
            }
        }
    }
    if (in_key) {                          // the double itself (a float32's exactly)
        F64 y;
        if (single) { F32 z; z.u = (u32)bits; y.d = (double)z.f; } else y.u = bits;
        put_repr(y.u);
        return;
    }
    int Xp = X;
    u32 k = round_digits(n, 17, r, &Xp);
    put_digits(r, k, Xp, neg);
}

// -- time.Time and time.Duration (decode._time, decode._duration)

static void put_pad(u64 v, int w) {
    char b[24];
    int i = 24;
    do { b[--i] = (char)('0' + v % 10); v /= 10; } while (v);
    while (24 - i < w) b[--i] = '0';
    put(b + i, (u32)(24 - i));
}

static i64 floordiv(i64 a, i64 b) { i64 q = a / b; return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q; }

// Digits of v (prec of them after the point) with the fraction's trailing zeros dropped.
static void put_fraction_digits(u64 frac, int prec) {
    char b[20];
    for (int i = prec - 1; i >= 0; i--) { b[i] = (char)('0' + frac % 10); frac /= 10; }
    int k = prec;
    while (k > 0 && b[k - 1] == '0') k--;
    if (k) { put(".", 1); put(b, (u32)k); }
}

// t.UTC().Format(time.RFC3339Nano)
static void put_time(u64 wall, i64 ext) {
    u64 nsec = wall & ((1u << 30) - 1);
    i64 sec = (wall >> 63) ? 59453308800LL + (i64)((wall >> 30) & ((1ULL << 33) - 1)) : ext;
    i64 days = floordiv(sec, 86400), rem = sec - days * 86400;
    i64 cycles = floordiv(days, 146097), d = days - cycles * 146097;
    // civil date of day d after 0001-01-01 (H. Hinnant's civil_from_days), within one 400-year cycle
    i64 z = d - 719162 + 719468;
    i64 era = z / 146097, doe = z - era * 146097;
    i64 yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    i64 y = yoe + era * 400, doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    i64 mp = (5 * doy + 2) / 153, day = doy - (153 * mp + 2) / 5 + 1, month = mp < 10 ? mp + 3 : mp - 9;
    if (month <= 2) y++;
    i64 year = y + 400 * cycles;
    put("\"", 1);
    if (year < 0) { put("-", 1); put_pad((u64)-year, 4); } else put_pad((u64)year, 4);
    put("-", 1); put_pad((u64)month, 2); put("-", 1); put_pad((u64)day, 2);
    put("T", 1); put_pad((u64)(rem / 3600), 2); put(":", 1); put_pad((u64)(rem / 60 % 60), 2);
    put(":", 1); put_pad((u64)(rem % 60), 2);
    if (nsec) {
        char b[12];
        int n = 0;
        u64 v = nsec;
        char t[12];
        int k = 0;
        do { t[k++] = (char)('0' + v % 10); v /= 10; } while (v);
        while (k < 9) t[k++] = '0';
        while (k) b[n++] = t[--k];
        while (n && b[n - 1] == '0') n--;
        put(".", 1); put(b, (u32)n);
    }
    put("Z\"", 2);
}

// time.Duration.String()
static void put_duration(i64 d) {
    put("\"", 1);
    if (d == 0) { put("0s\"", 3); return; }
    u64 u = d < 0 ? (u64)0 - (u64)d : (u64)d;
    if (d < 0) put("-", 1);
    if (u < 1000000000ULL) {
        if (u < 1000) { put_u64(u); puts_("ns"); }
        else if (u < 1000000) { put_u64(u / 1000); put_fraction_digits(u % 1000, 3); puts_("\xc2\xb5s"); }
        else { put_u64(u / 1000000); put_fraction_digits(u % 1000000, 6); puts_("ms"); }
    } else {
        u64 secs = u / 1000000000ULL, nanos = u % 1000000000ULL;
        if (secs >= 3600) { put_u64(secs / 3600); put("h", 1); }
        if (secs >= 60) { put_u64(secs / 60 % 60); put("m", 1); }
        put_u64(secs % 60);
        put_fraction_digits(nanos, 9);
        put("s", 1);
    }
    put("\"", 1);
}

// -- funcs: a pc's name from the func table (decode._func; the agent's func_name answers)

static int find_func(u64 pc, u32 *noff, u32 *nlen) {
    u32 lo = 0, hi = nfuncs;
    while (lo < hi && status == ST_OK) {
        u32 mid = lo + (hi - lo) / 2;
        u64 got = rd64(funcs_off + mid * 16);
        if (got == pc) { *noff = rd32(funcs_off + mid * 16 + 8); *nlen = rd32(funcs_off + mid * 16 + 12); return status == ST_OK; }
        if (got < pc) lo = mid + 1; else hi = mid;
    }
    return 0;
}

// -- maps (decode._map): the layout is data (a record in the names section,
// computed in Python by the reference's own layout functions)

enum { ML_IMPL, ML_OBJ, ML_HSIZE, ML_H0, ML_H1, ML_H2, ML_H3, ML_H4, ML_GSIZE, ML_CTRL, ML_KEYS, ML_KSTRIDE,
       ML_ELEMS, ML_ESTRIDE, ML_OVERFLOW, ML_TSIZE, ML_TDATA, ML_TMASK, ML_WORDS };
#define MAX_INLINE_KV 128

static u64 field_of(const u8 *b, u32 packed) { return le(b + (packed & 0xFFFF), packed >> 16); }

// A set of addresses (open addressing in scratch space; 0 is never added).
typedef struct { u64 *k; u32 cap, n; } Set;

static int set_add(Set *s, u64 a) {          // 1 added, 0 there already, -1 out of memory
    if (!s->k || (s->n + 1) * 2 > s->cap) {
        u32 cap = s->cap ? s->cap * 2 : 64;
        if (cap > (1u << 26)) { status = ST_OUTPUT; why = "the module's memory limit (a map's walk)"; return -1; }
        u64 *k = (u64 *)scratch(cap * 8);
        if (!k) return -1;
        for (u32 i = 0; i < cap; i++) k[i] = 0;
        for (u32 i = 0; i < s->cap; i++) {
            if (!s->k[i]) continue;
            u32 h = (u32)((s->k[i] * 0x9E3779B97F4A7C15ULL) >> 40) & (cap - 1);
            while (k[h]) h = (h + 1) & (cap - 1);
            k[h] = s->k[i];
        }
        s->k = k; s->cap = cap;
    }
    u32 h = (u32)((a * 0x9E3779B97F4A7C15ULL) >> 40) & (s->cap - 1);
    while (s->k[h]) {
        if (s->k[h] == a) return 0;
        h = (h + 1) & (s->cap - 1);
    }
    s->k[h] = a; s->n++;
    return 1;
}

typedef struct {
    const u8 *L;                 // the layout record
    Type key, elem;
    u32 depth;
    u64 limit, entries;
    int stop;                    // a full slot past the limit was found: the walk ends
    Fail problem;                // unreadable memory or a spent budget: the walk ends, a marker says so
} MapWalk;

static u32 lw(const u8 *L, u32 i) { return (u32)le(L + 4 * i, 4); }

static void slot_value(Type *t, const u8 *gb, u64 ga, u32 off, u32 depth) {
    if (t->size > MAX_INLINE_KV) {           // stored indirectly: the slot holds a pointer
        u64 p = le(gb + off, 8);
        if (push(p, t->id, depth - 1)) { value(t->id, 0, 0, p, 1, depth); path_n--; }
    } else {
        value(t->id, gb + off, t->size, ga + off, 1, depth);
    }
}

// One full slot: its key and elem into the output, each followed by a separator
// byte (2 after a key holding a float), or the end of the walk past the limit.
static void full_slot(MapWalk *w, const u8 *gb, u64 ga, u32 koff, u32 eoff) {
    if (w->entries >= w->limit) { w->stop = 1; return; }
    u32 fl = nfloats;
    in_key++;
    slot_value(&w->key, gb, ga, koff, w->depth);
    in_key--;
    put(nfloats != fl ? "\x02" : "\x01", 1);
    slot_value(&w->elem, gb, ga, eoff, w->depth);
    put("\x01", 1);
    w->entries++;
}

static void swiss_group(MapWalk *w, u64 ga) {
    const u8 *L = w->L;
    const u8 *gb = mem(ga, lw(L, ML_GSIZE), &w->problem);
    if (!gb) return;
    u64 ctrl = le(gb + lw(L, ML_CTRL), 8);
    for (u32 i = 0; i < 8 && !w->stop && status == ST_OK; i++)
        if (!((ctrl >> (8 * i)) & 0x80))
            full_slot(w, gb, ga, lw(L, ML_KEYS) + i * lw(L, ML_KSTRIDE), lw(L, ML_ELEMS) + i * lw(L, ML_ESTRIDE));
}

static char fmsg[64];

// Returns 0 when the map itself is malformed (f says why).
static int swiss_walk(MapWalk *w, u64 dir_ptr, i64 dir_len, Fail *f) {
    const u8 *L = w->L;
    if (dir_len == 0) {                      // small map: dirPtr is the one group
        if (dir_ptr) swiss_group(w, dir_ptr);
        return 1;
    }
    if (!(dir_len > 0 && dir_len <= (1 << 20))) {
        u32 saved = out_len, cap = out_cap; u8 *o = out;
        out = (u8 *)fmsg; out_len = 0; out_cap = sizeof fmsg - 1;
        puts_("map directory length "); put_i64(dir_len);
        fmsg[out_len] = 0;
        out = o; out_len = saved; out_cap = cap;
        f->code = R_MALFORMED; f->msg = fmsg;
        return 0;
    }
    const u8 *dir = mem(dir_ptr, (u64)dir_len * 8, &w->problem);
    if (!dir) return 1;
    Set seen = {0, 0, 0};
    u32 gsize = lw(L, ML_GSIZE);
    for (i64 i = 0; i < dir_len && !w->stop && !w->problem.code && status == ST_OK; i++) {
        u64 tp = le(dir + 8 * i, 8);
        if (!tp) continue;
        int added = set_add(&seen, tp);
        if (added <= 0) continue;
        const u8 *tb = mem(tp, lw(L, ML_TSIZE), &w->problem);
        if (!tb) break;
        u64 data = field_of(tb, lw(L, ML_TDATA)), mask = field_of(tb, lw(L, ML_TMASK));
        for (u64 g = 0; !w->stop && !w->problem.code && status == ST_OK; g++) {
            swiss_group(w, data + g * gsize);
            if (g == mask) break;
        }
    }
    return 1;
}

static void hmap_walk(MapWalk *w, u64 buckets, u64 nb, u64 old, u64 nold) {
    const u8 *L = w->L;
    u32 bsize = lw(L, ML_GSIZE), ctrl = lw(L, ML_CTRL), ovf = lw(L, ML_OVERFLOW);
    Set seen = {0, 0, 0};
    u64 base[2] = {buckets, old}, n[2] = {nb, old ? nold : 0};
    for (int s = 0; s < 2; s++) {
        for (u64 i = 0; base[s] && i < n[s] && !w->stop && !w->problem.code && status == ST_OK; i++) {
            u64 bucket = base[s] + i * bsize;
            while (bucket && !w->stop && status == ST_OK) {
                int added = set_add(&seen, bucket);
                if (added <= 0) break;
                const u8 *bb = mem(bucket, bsize, &w->problem);
                if (!bb) return;
                for (u32 k = 0; k < 8 && !w->stop && status == ST_OK; k++)
                    if (bb[ctrl + k] >= 5)          // minTopHash: empty and evacuated slots are below
                        full_slot(w, bb, bucket, lw(L, ML_KEYS) + k * lw(L, ML_KSTRIDE),
                                  lw(L, ML_ELEMS) + k * lw(L, ML_ESTRIDE));
                if (w->stop) return;
                bucket = le(bb + ovf, 8);
            }
        }
    }
}

// Python's str order of two JSON string texts (both from put_jstring): code
// point by code point, the escapes read back.
static u32 jchar(const u8 *s, u32 n, u32 *i) {
    u32 c = s[*i];
    if (c == '\\' && *i + 1 < n) {
        u32 e = s[*i + 1];
        *i += 2;
        if (e == 'n') return '\n';
        if (e == 'r') return '\r';
        if (e == 't') return '\t';
        if (e == 'b') return '\b';
        if (e == 'f') return '\f';
        if (e == 'u' && *i + 4 <= n) {
            u32 v = 0;
            for (int k = 0; k < 4; k++) { u32 h = s[(*i)++]; v = v << 4 | (h <= '9' ? h - '0' : h - 'a' + 10); }
            return v;
        }
        return e;
    }
    u32 sz;
    u32 r = rune(s + *i, n - *i, &sz);
    *i += sz;
    return r;
}

static int cmp_jstr(const u8 *a, u32 an, const u8 *b, u32 bn) {
    u32 i = 1, j = 1;                       // past the opening quotes; the closing ones end it
    an--; bn--;
    while (i < an && j < bn) {
        u32 x = jchar(a, an, &i), y = jchar(b, bn, &j);
        if (x != y) return x < y ? -1 : 1;
    }
    return (i < an) - (j < bn);
}

// An int or bool key's text as (negative, magnitude).
static void int_key(const u8 *s, u32 n, int *neg, u64 *mag) {
    *neg = 0; *mag = 0;
    if (n && s[0] == 't') { *mag = 1; return; }
    if (n && s[0] == 'f') return;
    u32 i = 0;
    if (n && s[0] == '-') { *neg = 1; i = 1; }
    for (; i < n; i++) *mag = *mag * 10 + (u64)(s[i] - '0');
}

typedef struct { u32 ks, kl, vs, vl, kfloat; int neg; u64 mag; u64 ord; } Entry;
static Entry *ents;
static const u8 *ebase;
static int obj_sort, ord_keys;   // ord_keys: every key an int in one u64 order (ord)

// The order decode._map_json sorts in: objects by (is a string, key), lists by
// the key's JSON text.
static int entry_cmp(u32 a, u32 b) {
    const u8 *ka = ebase + ents[a].ks, *kb = ebase + ents[b].ks;
    u32 na = ents[a].kl, nb = ents[b].kl;
    if (obj_sort) {
        int sa = ka[0] == '"', sb = kb[0] == '"';
        if (sa != sb) return sa - sb;
        if (sa) return cmp_jstr(ka, na, kb, nb);
        if (ord_keys) return ents[a].ord < ents[b].ord ? -1 : ents[a].ord > ents[b].ord;
        int ga = ents[a].neg, gb = ents[b].neg; u64 ma = ents[a].mag, mb = ents[b].mag;
        if (ga != gb) return ga ? -1 : 1;
        if (ma == mb) return 0;
        return (ma < mb) != ga ? -1 : 1;
    }
    for (u32 i = 0; i < na && i < nb; i++)
        if (ka[i] != kb[i]) return ka[i] < kb[i] ? -1 : 1;
    return (na > nb) - (na < nb);
}

static void merge_sort(u32 *idx, u32 *tmp, u32 n) {   // stable, as Python's sort
    for (u32 w = 1; w < n; w *= 2) {
        for (u32 lo = 0; lo < n; lo += 2 * w) {
            u32 mid = lo + w < n ? lo + w : n, hi = lo + 2 * w < n ? lo + 2 * w : n;
            u32 i = lo, j = mid, k = lo;
            while (i < mid && j < hi) tmp[k++] = entry_cmp(idx[j], idx[i]) < 0 ? idx[j++] : idx[i++];
            while (i < mid) tmp[k++] = idx[i++];
            while (j < hi) tmp[k++] = idx[j++];
        }
        for (u32 i = 0; i < n; i++) idx[i] = tmp[i];
    }
}

// Int keys by their order key, a byte at a time (stable): a 5,000-entry map
// sorts in a tenth of the merge sort's instructions.
static void radix_sort(u32 *idx, u32 *tmp, u32 n) {
    for (u32 shift = 0; shift < 64; shift += 8) {
        u32 cnt[257];
        for (u32 i = 0; i < 257; i++) cnt[i] = 0;
        for (u32 i = 0; i < n; i++) cnt[((ents[idx[i]].ord >> shift) & 0xFF) + 1]++;
        if (cnt[((ents[idx[0]].ord >> shift) & 0xFF) + 1] == n) continue;   // one byte value: nothing moves
        for (u32 i = 1; i < 257; i++) cnt[i] += cnt[i - 1];
        for (u32 i = 0; i < n; i++) tmp[cnt[(ents[idx[i]].ord >> shift) & 0xFF]++] = idx[i];
        for (u32 i = 0; i < n; i++) idx[i] = tmp[i];
    }
}

static void put_problem(const Fail *p) {
    if (p->code == R_UNREADABLE) {
        puts_("{\"__error\":\"unreadable memory at "); put_hex(p->addr); puts_(" ("); put_u64(p->n); puts_(" bytes)\"}");
    } else puts_("{\"__truncated\":\"budget\"}");
}

// The walked entries (out[start..out_len), separated) rewritten as decode._map_json
// renders them: an object sorted by key when every key is an int, bool or string,
// else a list of {"key", "value"} sorted by the key's JSON text; then the markers.
static void map_finish(u32 start, MapWalk *w, u64 count, int counted) {
    u32 n = (u32)w->entries, top = scratch_top;
    Entry *e = (Entry *)scratch(n * sizeof(Entry) + 8);
    u32 *idx = (u32 *)scratch(n * 8 + 8);
    if (!e || !idx) return;
    u32 at = start, obj = lw(w->L, ML_OBJ), kfloats = 0;
    for (u32 i = 0; i < n; i++) {
        u32 s = at;
        while (at < out_len && out[at] > 2) at++;
        e[i].ks = s; e[i].kl = at - s; e[i].kfloat = at < out_len && out[at] == 2; at++;
        s = at;
        while (at < out_len && out[at] > 2) at++;
        e[i].vs = s; e[i].vl = at - s; at++;
        u8 c = e[i].kl ? out[e[i].ks] : 'n';
        if (!(c == '"' || c == '-' || c == 't' || c == 'f' || (c >= '0' && c <= '9'))) obj = 0;
        kfloats |= e[i].kfloat;
        if (c != '"' && e[i].kl) int_key(out + e[i].ks, e[i].kl, &e[i].neg, &e[i].mag);
        idx[i] = i;
    }
    (void)kfloats;                           // keys' floats are written as Python's repr: sorted alike
    ents = e; ebase = out; obj_sort = (int)obj;
    ord_keys = obj && n > 0;
    for (u32 i = 0; i < n && ord_keys; i++)   // ints of one sign, or signed ones that fit: one order key
        ord_keys = out[e[i].ks] != '"' && (e[i].mag >> 63) == 0;
    for (u32 i = 0; i < n && ord_keys; i++)
        e[i].ord = e[i].neg ? (1ULL << 63) - e[i].mag : (1ULL << 63) + e[i].mag;
    if (ord_keys && n > 32) radix_sort(idx, idx + n, n);
    else merge_sort(idx, idx + n, n);
    u32 cap = (out_len - start) + 24 * n + 256;
    u8 *buf = scratch(cap);
    if (!buf) return;
    u8 *o = out; u32 o_len = out_len, o_cap = out_cap;
    out = buf; out_len = 0; out_cap = cap;
    int cut = counted && count > w->entries, first = 1;
    if (obj) {
        put("{", 1);
        for (u32 i = 0; i < n; i++) {
            // equal keys: the first one's place, the last one's value (a dict built in order)
            while (i + 1 < n && entry_cmp(idx[i], idx[i + 1]) == 0) i++;
            Entry *x = &e[idx[i]];
            const u8 *k = o + x->ks;
            if (!first) put(",", 1);
            first = 0;
            if (k[0] == '"') {
                if (x->kl >= 3 && k[1] == '_' && k[2] == '_') { put("\"_", 2); put((const char *)k + 1, x->kl - 1); }
                else put((const char *)k, x->kl);
            } else {
                put("\"", 1);
                put((const char *)k, x->kl);
                put("\"", 1);
            }
            put(":", 1);
            put((const char *)o + x->vs, x->vl);
        }
        if (cut) { puts_(first ? "\"__truncated\":{\"len\":" : ",\"__truncated\":{\"len\":"); put_u64(count); puts_("}"); }
        else if (w->problem.code) {
            if (!first) put(",", 1);
            if (w->problem.code == R_UNREADABLE) {
                puts_("\"__error\":\"unreadable memory at "); put_hex(w->problem.addr); puts_(" (");
                put_u64(w->problem.n); puts_(" bytes)\"");
            } else puts_("\"__truncated\":\"budget\"");
        }
        put("}", 1);
    } else {
        put("[", 1);
        for (u32 i = 0; i < n; i++) {
            Entry *x = &e[idx[i]];
            if (i) put(",", 1);
            puts_("{\"key\":"); put((const char *)o + x->ks, x->kl);
            puts_(",\"value\":"); put((const char *)o + x->vs, x->vl); put("}", 1);
        }
        if (cut) { puts_(n ? ",{\"__truncated\":\"elements\",\"len\":" : "{\"__truncated\":\"elements\",\"len\":"); put_u64(count); puts_("}"); }
        if (w->problem.code) { if (n || cut) put(",", 1); put_problem(&w->problem); }
        put("]", 1);
    }
    u32 len = out_len, ok = status == ST_OK;
    out = o; out_len = o_len; out_cap = o_cap;
    if (ok) {
        out_len = start;
        put((const char *)buf, len);
    } else if (status == ST_OUTPUT) why = "output larger than its cap";
    scratch_top = top;
}

static int packed_ok(u32 packed, u32 within) { return (packed >> 16) <= 8 && (packed & 0xFFFF) + (packed >> 16) <= within; }

// Every offset the walk reads at is inside what it reads (hostile input must not make it read past).
static int layout_ok(const u8 *L, Type *k, Type *e) {
    u32 g = lw(L, ML_GSIZE), impl = lw(L, ML_IMPL), hs = lw(L, ML_HSIZE);
    u64 ks = k->size > MAX_INLINE_KV ? 8 : k->size, es = e->size > MAX_INLINE_KV ? 8 : e->size;
    if ((impl != 1 && impl != 2) || !g || !hs || (u64)lw(L, ML_CTRL) + 8 > g) return 0;
    if ((u64)lw(L, ML_KEYS) + 7ULL * lw(L, ML_KSTRIDE) + ks > g) return 0;
    if ((u64)lw(L, ML_ELEMS) + 7ULL * lw(L, ML_ESTRIDE) + es > g) return 0;
    for (u32 i = ML_H0; i <= ML_H4; i++) if (!packed_ok(lw(L, i), hs)) return 0;
    if (impl == 2) return (u64)lw(L, ML_OVERFLOW) + 8 <= g;
    return lw(L, ML_TSIZE) && packed_ok(lw(L, ML_TDATA), lw(L, ML_TSIZE)) && packed_ok(lw(L, ML_TMASK), lw(L, ML_TSIZE));
}

static void map_value(Type *t, u64 p, u32 depth, Fail *f) {
    if (t->length > names_len || names_len - t->length < ML_WORDS * 4) {
        status = ST_MALFORMED; why = "a map layout outside the input"; return;
    }
    const u8 *L = in + names_off + (u32)t->length;
    MapWalk w;
    w.L = L; w.depth = depth; w.entries = 0; w.stop = 0; w.problem.code = 0;
    if (!find_type(t->w2, &w.key) || !find_type(t->elem, &w.elem)) {
        if (status == ST_OK) { status = ST_MALFORMED; why = "a map's key or elem type is not in the table"; }
        return;
    }
    if (!layout_ok(L, &w.key, &w.elem)) { status = ST_MALFORMED; why = "a map layout outside its group"; return; }
    u32 start = out_len, top = scratch_top;
    u64 count = 0;
    const u8 *h = mem(p, lw(L, ML_HSIZE), &w.problem);
    if (h) {
        if (lw(L, ML_IMPL) == 1) {
            count = field_of(h, lw(L, ML_H0));
            u64 dir_ptr = field_of(h, lw(L, ML_H1)), dir_len = field_of(h, lw(L, ML_H2));
            w.limit = count < elements ? count : elements;
            if (!swiss_walk(&w, dir_ptr, (i64)dir_len, f)) { scratch_top = top; return; }
        } else {
            count = field_of(h, lw(L, ML_H0));
            u64 flags = field_of(h, lw(L, ML_H1)), B = field_of(h, lw(L, ML_H2));
            u64 buckets = field_of(h, lw(L, ML_H3)), old = field_of(h, lw(L, ML_H4));
            w.limit = count < elements ? count : elements;
            u64 nb = B >= 64 ? ~0ULL : 1ULL << B;
            u64 nold = (flags & 8) ? nb : (B == 0 ? 1 : B - 1 >= 64 ? ~0ULL : 1ULL << (B - 1));
            hmap_walk(&w, buckets, nb, old, nold);
        }
    }
    scratch_top = top;
    if (status != ST_OK) return;
    if (w.problem.code && w.problem.code != R_UNREADABLE && w.problem.code != R_BUDGET) {
        *f = w.problem;                      // not reached: the walk's reads fail only so
        return;
    }
    map_finish(start, &w, count, !w.problem.code);
}

// -- error messages (decode._error_message), read back from the value's JSON text

static u32 json_skip(const u8 *s, u32 i, u32 n) {   // past the JSON value at s[i]
    u32 depth = 0;
    while (i < n) {
        u8 c = s[i];
        if (c == '"') {
            for (i++; i < n && s[i] != '"'; i++) if (s[i] == '\\') i++;
            i++;
            if (!depth) return i;
        } else if (c == '{' || c == '[') { depth++; i++; }
        else if (c == '}' || c == ']') { if (!depth) return i; depth--; i++; if (!depth) return i; }
        else if (c == ',' && !depth) return i;
        else i++;
    }
    return i;
}

// The value of the object s[0..n)'s top-level key (plain ASCII): [*vs, *ve); 0 if absent.
static int json_get(const u8 *s, u32 n, const char *key, u32 klen, u32 *vs, u32 *ve) {
    if (!n || s[0] != '{') return 0;
    int found = 0;
    for (u32 i = 1; i < n && s[i] == '"';) {
        u32 ks = i;
        i = json_skip(s, i, n);
        u32 v = i + 1, e = json_skip(s, v, n);
        if (i - ks == klen + 2 && same(s + ks + 1, key, klen)) { *vs = v; *ve = e; found = 1; }
        i = e < n && s[e] == ',' ? e + 1 : e;
    }
    return found;
}

// After an interface's value (out[vs..]) whose dynamic type is a known error
// type: its message as "__error" when the reference finds one (the pointee's
// message field, a string; a joinError's errs' messages joined by newlines).
static void error_message(Type *dyn, u32 vs, Fail *f) {
    const u8 *s = out + vs;
    u32 n = out_len - vs, a, b;
    if (dyn->kind == K_POINTER) {          // the message is the pointee's (decode: value.value)
        Type e;
        if (dyn->elem == 0xFFFFFFFFu || !find_type(dyn->elem, &e) || e.kind == K_POINTER) return;
        if (raw_mode) {
            if (n < 10 || !same(s, "{\"__addr\":", 10) || !json_get(s, n, "value", 5, &a, &b)) return;
            s += a; n = b - a;
        }
    }
    if (dyn->tflags & T_JOIN_ERROR) {
        if (!json_get(s, n, "errs", 4, &a, &b) || s[a] != '[') return;
        u32 count = 0, all = 1;
        for (u32 i = a + 1; i < b && s[i] != ']';) {
            u32 e = json_skip(s, i, b), x, y;
            if (s[i] == 'n') {                 // the reference's own failure: None.get
                f->code = R_MALFORMED; f->msg = "'NoneType' object has no attribute 'get'"; return;
            }
            if (s[i] != '{') { status = ST_UNSUPPORTED; why = "a joinError whose errs are not interfaces"; return; }
            if (!json_get(s + i, e - i, "__error", 7, &x, &y) || s[i + x] != '"') all = 0;
            count++;
            i = e < b && s[e] == ',' ? e + 1 : e;
        }
        if (!count || !all) return;
        puts_(",\"__error\":\"");
        u32 k = 0;
        for (u32 i = a + 1; i < b && s[i] != ']' && status == ST_OK; k++) {
            u32 e = json_skip(s, i, b), x, y;
            json_get(s + i, e - i, "__error", 7, &x, &y);
            if (k) put("\\n", 2);
            put((const char *)s + i + x + 1, y - x - 2);   // the text between its quotes
            i = e < b && s[e] == ',' ? e + 1 : e;
        }
        put("\"", 1);
        return;
    }
    u32 noff = dyn->w2 >> 8, nlen = dyn->w2 & 0xFF;
    if (!in_ok((u64)names_off + noff, nlen) || noff > names_len) return;
    if (json_get(s, n, (const char *)in + names_off + noff, nlen, &a, &b) && s[a] == '"') {
        puts_(",\"__error\":");
        put((const char *)s + a, b - a);
    }
}

static void decode(Type *t, const u8 *data, u64 dlen, u64 addr, int has_addr, u32 depth, Fail *f) {
    const u8 *b;
    switch (t->kind) {
    case K_BOOL:
        if (!(b = own(t, data, dlen, addr, has_addr, f))) return;
        puts_(t->size && b[0] ? "true" : "false");
        return;
    case K_INT: {
        if (!(b = own(t, data, dlen, addr, has_addr, f))) return;
        u32 n = t->size > 8 ? 8 : (u32)t->size;
        u64 v = le(b, n);
        if (n && n < 8 && (v >> (8 * n - 1) & 1)) v |= ~0ULL << (8 * n);
        put_i64((i64)v);
        return;
    }
    case K_UINT:
        if (!(b = own(t, data, dlen, addr, has_addr, f))) return;
        put_u64(le(b, t->size > 8 ? 8 : (u32)t->size));
        return;
    case K_UNSAFE_POINTER: {
        if (!(b = own(t, data, dlen, addr, has_addr, f))) return;
        u64 p = le(b, 8);
        if (p) { puts_("\""); put_hex(p); puts_("\""); } else puts_("null");
        return;
    }
    case K_UNKNOWN: {
        if (!(b = own(t, data, dlen, addr, has_addr, f))) return;
        u32 nn; const u8 *name = name_of(t, &nn);
        puts_("{\"__type\":"); put_jstring(name, nn); puts_(",\"__bytes\":\"");
        for (u64 i = 0; i < t->size && status == ST_OK; i++) {
            char h[2] = {"0123456789abcdef"[b[i] >> 4], "0123456789abcdef"[b[i] & 15]};
            put(h, 2);
        }
        puts_("\"}");
        return;
    }
    case K_STRING: {
        if (!(b = own(t, data, dlen, addr, has_addr, f))) return;
        if (t->f0_off + t->f0_size > t->size || t->f1_off + t->f1_size > t->size) {
            f->code = R_MALFORMED; f->msg = "string fields outside the string"; return;
        }
        u64 p = le(b + t->f0_off, t->f0_size), n = le(b + t->f1_off, t->f1_size);
        if (n == 0) { puts_("\"\""); return; }
        u64 cut = n < string_bytes ? n : string_bytes;
        const u8 *s = mem(p, cut, f);
        if (!s) return;
        if (cut == n) { put_jstring(s, (u32)cut); return; }
        puts_("{\"__truncated\":\"bytes\",\"value\":"); put_jstring(s, cut_at_rune(s, (u32)cut));
        puts_(",\"len\":"); put_u64(n); puts_("}");
        return;
    }
    case K_STRUCT: {
        if (!data && t->size <= EAGER_BYTES) {
            if (!(data = own(t, data, dlen, addr, has_addr, f))) return;
            dlen = t->size;
        }
        puts_("{");
        for (u32 i = 0; i < t->nfields && status == ST_OK; i++) {
            u32 o = fields_off + (t->first_field + i) * FIELD_REC;
            if (!in_ok(o, FIELD_REC)) { status = ST_MALFORMED; why = "field outside the input"; return; }
            u32 nm_off = rd32(o), nm_len = rd32(o + 4);
            u64 foff = rd64(o + 8);
            u32 ftid = rd32(o + 16);
            Type ft;
            if (!find_type(ftid, &ft)) { f->code = R_MALFORMED; f->msg = "field type is not in the type table"; return; }
            if (!in_ok((u64)names_off + nm_off, nm_len)) { status = ST_MALFORMED; why = "field name outside the input"; return; }
            if (i) puts_(",");
            put_jstring(in + names_off + nm_off, nm_len);
            puts_(":");
            const u8 *sub = 0; u64 sl = 0;
            if (data) {
                sub = foff <= dlen ? data + foff : data + dlen;
                sl = foff <= dlen ? (dlen - foff < ft.size ? dlen - foff : ft.size) : 0;
            }
            value(ftid, sub, sl, addr + foff, has_addr, depth);
        }
        puts_("}");
        return;
    }
    case K_ARRAY:
        if (!data && !has_addr) { f->code = R_MALFORMED; f->msg = "the array has no location"; return; }
        run(t->elem, data, dlen, addr, has_addr, t->length, depth, f);
        return;
    case K_SLICE: {
        if (!(b = own(t, data, dlen, addr, has_addr, f))) return;
        if (t->f0_off + t->f0_size > t->size || t->f1_off + t->f1_size > t->size) {
            f->code = R_MALFORMED; f->msg = "slice fields outside the slice"; return;
        }
        u64 p = le(b + t->f0_off, t->f0_size), n = le(b + t->f1_off, t->f1_size);
        if (!p) { puts_("null"); return; }
        if (!push(p, t->id, depth)) return;
        Fail g = {0};
        u32 at = out_len;
        run(t->elem, 0, 0, p, 1, n, depth + 1, &g);
        path_n--;
        if (g.code) { out_len = at; *f = g; }     // as an exception out of indirect()
        return;
    }
    case K_POINTER: {
        if (!(b = own(t, data, dlen, addr, has_addr, f))) return;
        u64 p = le(b, 8);
        if (!p) { puts_("null"); return; }
        Type e;
        int known = t->elem != 0xFFFFFFFFu && find_type(t->elem, &e);
        if (status != ST_OK) return;
        u32 mark = out_len;
        if (!known) puts_("{\"__type\":\"unknown\"}");
        else if (push(p, t->elem, depth)) {
            value(t->elem, 0, 0, p, 1, depth + 1);
            path_n--;
        }
        if (raw_mode && status == ST_OK) {
            // render(): {"__addr": p, "value": inner}, unless inner is a cycle or
            // depth marker (it names the address already).
            u32 n = out_len - mark;
            int marker = (n >= 11 && same(out + mark, "{\"__cycle\":", 11)) ||
                         (n >= 22 && same(out + mark, "{\"__truncated\":\"depth\"", 22));
            if (!marker) {
                char head[48]; u32 h = 0;
                const char *a = "{\"__addr\":";
                while (a[h]) { head[h] = a[h]; h++; }
                char dig[24]; int i = 24; u64 v = p;
                do { dig[--i] = (char)('0' + v % 10); v /= 10; } while (v);
                while (i < 24) head[h++] = dig[i++];
                const char *c = ",\"value\":";
                for (u32 k = 0; c[k]; k++) head[h++] = c[k];
                if (!put(head, h)) return;               // room for the head
                for (u32 k = n; k > 0; k--) out[mark + h + k - 1] = out[mark + k - 1];
                for (u32 k = 0; k < h; k++) out[mark + k] = (u8)head[k];
                puts_("}");
            }
        }
        return;
    }
    case K_IFACE: {                      // decode._interface
        if (!(b = own(t, data, dlen, addr, has_addr, f))) return;
        if (t->f0_off + t->f0_size > t->size || t->f1_off + t->f1_size > t->size) {
            f->code = R_MALFORMED; f->msg = "interface fields outside the interface"; return;
        }
        u64 rtype = le(b + t->f0_off, t->f0_size);
        if (!(t->length >> 32)) {            // iface: the word is the itab; its Type field is the rtype
            if (!rtype) { puts_("null"); return; }
            const u8 *w = mem(rtype + (t->length & 0xFFFFFFFFu), 8, f);
            if (!w) return;
            rtype = le(w, 8);
        }
        if (!rtype) { puts_("null"); return; }
        u64 word = le(b + t->f1_off, t->f1_size);
        u32 dyn_id;
        Type dyn;
        int known = find_rtype(rtype, &dyn_id);
        if (known && dyn_id == 0xFFFFFFFFu) {   // the agent looked it up: no type has this address
            puts_("{\"__type\":\"unknown\",\"__addr\":"); put_u64(word);
            puts_(",\"__rtype\":\""); put_hex(rtype); puts_("\"}");
            return;
        }
        if (!known || !find_type(dyn_id, &dyn)) {
            if (status == ST_OK) { status = ST_UNSUPPORTED; why = "an interface's dynamic type the table lacks"; why_arg = rtype; }
            return;
        }
        u32 nn; const u8 *name = name_of(&dyn, &nn);
        puts_("{\"__type\":"); put_jstring(name, nn); puts_(",\"value\":");
        u32 vstart = out_len;
        if (dyn.tflags & T_DIRECT) {
            u8 wb[8];
            for (int i = 0; i < 8; i++) wb[i] = (u8)(word >> (8 * i));
            value(dyn_id, wb, 8, 0, 0, depth);
        } else if (push(word, dyn_id, depth)) {
            value(dyn_id, 0, 0, word, 1, depth + 1);
            path_n--;
        }
        if (status == ST_OK && (dyn.tflags & (T_NAMED_ERROR | T_JOIN_ERROR)))
            error_message(&dyn, vstart, f);
        if (f->code) return;
        puts_("}");
        return;
    }
    case K_CHAN: {                       // decode._chan: the hchan header's counts
        if (!(b = own(t, data, dlen, addr, has_addr, f))) return;
        u64 p = le(b, 8);
        if (!p) { puts_("null"); return; }
        u32 hsize = t->elem;              // bytes of the header to read
        u32 c_off = (u32)t->length & 0xFFFF, c_size = (u32)(t->length >> 16) & 0xFFFF;
        if (t->f0_off + t->f0_size > hsize || t->f1_off + t->f1_size > hsize || c_off + c_size > hsize) {
            f->code = R_MALFORMED; f->msg = "hchan fields outside its header"; return;
        }
        const u8 *h = mem(p, hsize, f);
        if (!h) return;
        u32 nn; const u8 *name = name_of(t, &nn);
        puts_("{\"__chan\":"); put_jstring(name, nn);
        puts_(",\"len\":"); put_u64(le(h + t->f0_off, t->f0_size));
        puts_(",\"cap\":"); put_u64(le(h + t->f1_off, t->f1_size));
        puts_(le(h + c_off, c_size) ? ",\"closed\":true}" : ",\"closed\":false}");
        return;
    }
    case K_FLOAT:
        if (t->size != 4 && t->size != 8) { status = ST_MALFORMED; why = "a float of neither 4 nor 8 bytes"; return; }
        if (!(b = own(t, data, dlen, addr, has_addr, f))) return;
        put_float(le(b, (u32)t->size), t->size == 4);
        return;
    case K_COMPLEX: {
        if (t->size != 8 && t->size != 16) { status = ST_MALFORMED; why = "a complex of neither 8 nor 16 bytes"; return; }
        if (!(b = own(t, data, dlen, addr, has_addr, f))) return;
        u32 h = (u32)t->size / 2;
        puts_("{\"real\":"); put_float(le(b, h), h == 4);
        puts_(",\"imag\":"); put_float(le(b + h, h), h == 4); puts_("}");
        return;
    }
    case K_TIME: {                       // decode._time: the wall and ext fields
        if (t->f0_off + t->f0_size > t->size || t->f1_off + t->f1_size > t->size || t->f0_size > 8 || t->f1_size > 8) {
            status = ST_MALFORMED; why = "time fields outside the time"; return;
        }
        if (!(b = own(t, data, dlen, addr, has_addr, f))) return;
        put_time(le(b + t->f0_off, t->f0_size), (i64)le(b + t->f1_off, t->f1_size));
        return;
    }
    case K_DURATION: {
        if (t->size > 8) { status = ST_MALFORMED; why = "a duration wider than 8 bytes"; return; }
        if (!(b = own(t, data, dlen, addr, has_addr, f))) return;
        u32 n = (u32)t->size;
        u64 v = le(b, n);
        if (n && n < 8 && (v >> (8 * n - 1) & 1)) v |= ~0ULL << (8 * n);
        put_duration((i64)v);
        return;
    }
    case K_FUNC: {                       // decode._func: *funcval, its fn word, the pc's name
        if (t->size < 8) { status = ST_MALFORMED; why = "a func narrower than a pointer"; return; }
        if (!(b = own(t, data, dlen, addr, has_addr, f))) return;
        u64 p = le(b, 8);
        if (!p) { puts_("null"); return; }
        const u8 *w = mem(p, 8, f);
        if (!w) return;
        u64 pc = le(w, 8);
        u32 no = 0, nl = 0;
        if (!find_func(pc, &no, &nl)) {
            if (status != ST_OK) return;
            u32 i = 0;
            while (i < nmissing && missing[i] != pc) i++;
            if (i == nmissing) {
                if (nmissing == MAX_MISSING) { status = ST_UNSUPPORTED; why = "funcs whose names the table lacks"; return; }
                missing[nmissing++] = pc;
            }
            puts_("null");                  // the value ends Unsupported: the agent names the pcs
            return;
        }
        if (nl == 0xFFFFFFFFu) { puts_("{\"__func\":\""); put_hex(pc); puts_("\"}"); return; }
        if (no > fnames_len || fnames_len - no < nl) { status = ST_MALFORMED; why = "a func name outside the input"; return; }
        put_jstring(in + fnames_off + no, nl);
        return;
    }
    case K_MAP: {                        // decode._map
        if (t->size < 8) { status = ST_MALFORMED; why = "a map narrower than a pointer"; return; }
        if (!(b = own(t, data, dlen, addr, has_addr, f))) return;
        u64 p = le(b, 8);
        if (!p) { puts_("null"); return; }
        if (!push(p, t->id, depth)) return;
        Fail g = {0};
        u32 at = out_len;
        map_value(t, p, depth + 1, &g);
        path_n--;
        if (g.code) { out_len = at; *f = g; }
        return;
    }
    default:
        status = ST_UNSUPPORTED;
        why = "a kind the module does not decode";
        why_arg = t->id;
        return;
    }
}

static void value(u32 tid, const u8 *data, u64 dlen, u64 addr, int has_addr, u32 depth) {
    if (status != ST_OK) return;
    if (++nest > MAX_NEST) { status = ST_UNSUPPORTED; why = "values nested deeper than the module's"; nest--; return; }
    Type t;
    if (!find_type(tid, &t)) {
        if (status == ST_OK) { status = ST_MALFORMED; why = "a type id that is not in the table"; why_arg = tid; }
        nest--;
        return;
    }
    if (t.kind == K_OTHER) { status = ST_UNSUPPORTED; why = "a kind the module does not decode"; why_arg = tid; nest--; return; }
    Fail f = {0};
    u32 at = out_len;
    decode(&t, data, dlen, addr, has_addr, depth, &f);
    if (f.code && status == ST_OK) {        // _Decoder.value's except clauses
        out_len = at;
        if (f.code == R_UNREADABLE) {
            puts_("{\"__error\":\"unreadable memory at "); put_hex(f.addr); puts_(" ("); put_u64(f.n); puts_(" bytes)\"}");
        } else if (f.code == R_BUDGET) {
            puts_("{\"__truncated\":\"budget\"}");
        } else {
            u32 nn; const u8 *name = name_of(&t, &nn);
            puts_("{\"__error\":\"cannot decode ");
            u32 q = out_len; put_jstring(name, nn);          // the name, without its quotes
            for (u32 k = q + 1; k + 1 < out_len; k++) out[k - 1] = out[k];
            out_len -= 2;
            puts_(": "); puts_(f.msg); puts_("\"}");
        }
    }
    nest--;
}

// Input header (little-endian), at offset h of the input (decode_at: the
// tables and the memory image stay in place across values, and each value
// only writes its header and root bytes after them); section offsets are
// from the start of the input:
//   0 magic "XRW1"   4 string_bytes   8 elements   12 depth   16 raw
//  20 frame_left u64   28 snapshot_left u64
//  36 root type id   40 root flags (1: bytes given, 2: address given)
//  44 root addr u64   52 root bytes offset   56 root bytes length
//  60 ntypes  64 types offset  68 nfields  72 fields offset  76 names offset  80 names length
//  84 nranges 88 ranges offset 92 bytes offset 96 bytes length
// 100 nrtypes 104 rtypes offset
// 108 nfuncs 112 funcs offset (pc u64, name offset u32, name length u32 or ~0: no name) 116 func names offset 120 their length
#define HDR 124

// decode_batch's chain: what the previous value left of the frame's and the
// snapshot's budgets (header flags 4 and 8 take them instead of their own).
static u64 chain_frame, chain_snapshot;
static int chain_ok;

static u32 run_one(u32 h, int force_raw, u32 start) {
    out_len = start; status = ST_OK; why = ""; why_arg = 0; used = 0; path_n = 0; nest = 0;
    nmissing = 0; nfloats = 0; refused = 0; in_key = 0; scratch_top = (heap_end + 15u) & ~15u;
    if (++tcache_gen == 0) { for (u32 i = 0; i < TCACHE; i++) tcache_ok[i] = 0; tcache_gen = 1; }
    if (!in || h > in_len || in_len - h < HDR) { status = ST_MALFORMED; why = "input shorter than its header"; return status; }
    if (rd32(h + 0) != 0x31575258u) { status = ST_MALFORMED; why = "not a decoder input (magic)"; return status; }
    string_bytes = rd32(h + 4); elements = rd32(h + 8); depth_budget = rd32(h + 12);
    raw_mode = force_raw >= 0 ? (u32)force_raw : rd32(h + 16);
    frame_left = rd64(h + 20); snapshot_left = rd64(h + 28);
    u32 root = rd32(h + 36), flags = rd32(h + 40);
    u64 raddr = rd64(h + 44);
    if (flags & 12) {
        if (!chain_ok) { status = ST_SKIPPED; why = "chained after a value that was not decoded"; return status; }
        if (flags & 4) frame_left = chain_frame;
        if (flags & 8) snapshot_left = chain_snapshot;
    }
    u32 rb_off = rd32(h + 52), rb_len = rd32(h + 56);
    ntypes = rd32(h + 60); types_off = rd32(h + 64); nfields_total = rd32(h + 68); fields_off = rd32(h + 72);
    names_off = rd32(h + 76); names_len = rd32(h + 80);
    nranges = rd32(h + 84); ranges_off = rd32(h + 88); bytes_off = rd32(h + 92); bytes_len = rd32(h + 96);
    nrtypes = rd32(h + 100); rtypes_off = rd32(h + 104);
    nfuncs = rd32(h + 108); funcs_off = rd32(h + 112); fnames_off = rd32(h + 116); fnames_len = rd32(h + 120);
    if (status != ST_OK) return status;
    if (!in_ok(types_off, (u64)ntypes * TYPE_REC) || !in_ok(fields_off, (u64)nfields_total * FIELD_REC) ||
        !in_ok(names_off, names_len) || !in_ok(ranges_off, (u64)nranges * 24) ||
        !in_ok(bytes_off, bytes_len) || !in_ok(rb_off, rb_len) || !in_ok(rtypes_off, (u64)nrtypes * 16) ||
        !in_ok(funcs_off, (u64)nfuncs * 16) || !in_ok(fnames_off, fnames_len)) {
        status = ST_MALFORMED; why = "a section outside the input"; return status;
    }
    Type t;
    if (!find_type(root, &t)) {
        if (status != ST_OK) return status;
        puts_("{\"__error\":\"type "); put_u64(root); puts_(" is not in the type table\"}");
        return status;
    }
    value(root, (flags & 1) ? in + rb_off : 0, rb_len, raddr, (flags & 2) != 0, 0);
    if (status == ST_OK && nmissing) {
        status = ST_UNSUPPORTED; why = "funcs whose names the table lacks"; why_arg = missing[0];
    }
    return status;
}

__attribute__((export_name("decode_at")))
u32 decode_at(u32 h) { chain_ok = 0; return run_one(h, -1, 0); }

// The whole input is one value: the header at its start.
__attribute__((export_name("decode")))
u32 decode_input(void) { chain_ok = 0; return run_one(0, -1, 0); }

// Both forms of one value in one call (the agent's path: one call into the
// module per value): plain, then raw right after it in the output. The
// answer is in `result`: status, plain length, raw length, bytes read,
// the reason (a pointer to text), the output's address, the reason's
// argument (a runtime type address the table lacks, for one).
static u64 result[7];

__attribute__((export_name("result_ptr"))) u32 result_ptr(void) { return (u32)(unsigned long)result; }

__attribute__((export_name("decode_both")))
u32 decode_both(u32 h) {
    chain_ok = 0;
    u32 st = run_one(h, 0, 0);
    u32 n0 = out_len;
    u64 used0 = used;
    u32 refused0 = refused;
    if (st == ST_OK)
        st = run_one(h, 1, n0);
    result[0] = st | (u64)refused0 << 8; result[1] = n0; result[2] = st == ST_OK ? out_len - n0 : 0; result[3] = used0;
    result[4] = (u32)(unsigned long)why; result[5] = (u32)(unsigned long)out; result[6] = why_arg;
    return st;
}

// Many values in one call (each header HDR bytes after the previous, each
// with its own budgets and root): what the agent does for all the values of
// a snapshot after the resume, one crossing into the module instead of one
// a value. Per value, in batch_result: status, plain length, raw length,
// bytes read; the outputs follow each other from the output's start, each
// followed by a comma (so "[" + output without its last comma + "]" is
// the JSON list of them all, read by the agent in one parse). A
// value that is not OK has empty outputs, and the batch goes on. A value
// whose header has flag 4 (8) starts with what the previous one left of the
// frame's (snapshot's) budget, as values decoded one after another in one
// frame do; after a value not decoded, such a value is ST_SKIPPED (the agent
// decodes that one in Python and asks again from the next).
#define BATCH_MAX 4096
static u64 batch_result[BATCH_MAX * 4];

__attribute__((export_name("batch_result_ptr"))) u32 batch_result_ptr(void) { return (u32)(unsigned long)batch_result; }

__attribute__((export_name("decode_batch")))
u32 decode_batch(u32 h, u32 count) {
    u32 at = 0, done = 0;
    if (count > BATCH_MAX) count = BATCH_MAX;
    chain_ok = 0;
    for (u32 i = 0; i < count; i++) {
        u32 st = run_one(h + i * HDR, 0, at);
        u32 n0 = out_len - at;
        u64 used0 = used, f_after = frame_left, s_after = snapshot_left;
        u32 refused0 = refused;
        if (st == ST_OK && put(",", 1)) st = run_one(h + i * HDR, 1, at + n0 + 1);
        else if (st == ST_OK) st = status;
        if (st == ST_OK && !put(",", 1)) st = status;
        chain_ok = st == ST_OK;
        chain_frame = f_after; chain_snapshot = s_after;
        u32 n1 = st == ST_OK ? out_len - at - n0 - 2 : 0;
        if (st != ST_OK) { n0 = 0; out_len = at; }
        batch_result[4 * i] = st | (u64)refused0 << 8; batch_result[4 * i + 1] = n0; batch_result[4 * i + 2] = n1;
        batch_result[4 * i + 3] = used0;
        at = out_len;                        // plain "," raw "," for each value decoded: one JSON list
        done++;
        if (st == ST_OUTPUT) break;          // the output is full: the rest is not decoded
    }
    return done;
}

