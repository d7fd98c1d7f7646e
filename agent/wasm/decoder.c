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
// probe_compiler/decode.py (the reference) rule for rule for the kinds it
// knows: bool, int, uint, string, pointer, unsafe.Pointer, struct, array,
// slice, and unknown (raw bytes). Anything else (floats, maps, interfaces,
// channels, funcs, time.Time, time.Duration) ends the decode with
// ST_UNSUPPORTED, and the agent decodes that value in Python.
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

// Kinds as agent/wasm/decoder.py numbers them.
enum { K_BOOL = 1, K_INT, K_UINT, K_STRING, K_POINTER, K_UNSAFE_POINTER, K_STRUCT, K_ARRAY,
       K_SLICE, K_UNKNOWN, K_OTHER, K_IFACE, K_CHAN };
#define KIND_MASK 0xFF
#define T_DIRECT 0x100           // an interface holds this type in its data word (IsDirectIface)
#define T_NAMED_ERROR 0x200      // decode.ERROR_MESSAGE_FIELD names it: Python adds the message

#define EAGER_BYTES 4096
#define MAX_NEST 200             // C recursion: far past any depth budget
#define MAX_PATH 64              // pointers on the current path (the depth budget is below it)

extern u8 __heap_base;

static u8 *in;                   // the input, as the agent wrote it
static u32 in_len;
static u8 *out;                  // the output buffer
static u32 out_len, out_cap;
static u32 status;
static const char *why;          // ST_MALFORMED / ST_UNSUPPORTED: what
static u64 why_arg;

// The header, parsed.
static u32 string_bytes, elements, depth_budget, raw_mode;
static u64 frame_left, snapshot_left, used;
static u32 ntypes, types_off, nfields_total, fields_off, names_off, names_len;
static u32 nranges, ranges_off, bytes_off, bytes_len;
static u32 nrtypes, rtypes_off;   // (runtime type address, type id) records, sorted by address

// -- memory management: one region for input and output, grown on request

static u32 heap_end;

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
    return base;
}

__attribute__((export_name("output_ptr"))) u32 output_ptr(void) { return (u32)(unsigned long)out; }
__attribute__((export_name("output_len"))) u32 output_len(void) { return out_len; }
__attribute__((export_name("bytes_used"))) u64 bytes_used(void) { return used; }
__attribute__((export_name("why_ptr"))) u32 why_ptr(void) { return (u32)(unsigned long)why; }
__attribute__((export_name("why_arg"))) u64 why_argument(void) { return why_arg; }

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
    return status == ST_OK;
}

static int find_type(u32 id, Type *t) {      // the table is sorted by id
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
    if (n > frame_left || n > snapshot_left) { f->code = R_BUDGET; return 0; }
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
        if (!find_rtype(rtype, &dyn_id) || !find_type(dyn_id, &dyn)) {
            if (status == ST_OK) { status = ST_UNSUPPORTED; why = "an interface's dynamic type the table lacks"; why_arg = rtype; }
            return;
        }
        if (dyn.tflags & T_NAMED_ERROR) {
            status = ST_UNSUPPORTED; why = "an error type whose message the agent adds"; why_arg = 0;
            return;
        }
        u32 nn; const u8 *name = name_of(&dyn, &nn);
        puts_("{\"__type\":"); put_jstring(name, nn); puts_(",\"value\":");
        if (dyn.tflags & T_DIRECT) {
            u8 wb[8];
            for (int i = 0; i < 8; i++) wb[i] = (u8)(word >> (8 * i));
            value(dyn_id, wb, 8, 0, 0, depth);
        } else if (push(word, dyn_id, depth)) {
            value(dyn_id, 0, 0, word, 1, depth + 1);
            path_n--;
        }
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
#define HDR 108

static u32 run_one(u32 h, int force_raw, u32 start) {
    out_len = start; status = ST_OK; why = ""; why_arg = 0; used = 0; path_n = 0; nest = 0;
    if (!in || h > in_len || in_len - h < HDR) { status = ST_MALFORMED; why = "input shorter than its header"; return status; }
    if (rd32(h + 0) != 0x31575258u) { status = ST_MALFORMED; why = "not a decoder input (magic)"; return status; }
    string_bytes = rd32(h + 4); elements = rd32(h + 8); depth_budget = rd32(h + 12);
    raw_mode = force_raw >= 0 ? (u32)force_raw : rd32(h + 16);
    frame_left = rd64(h + 20); snapshot_left = rd64(h + 28);
    u32 root = rd32(h + 36), flags = rd32(h + 40);
    u64 raddr = rd64(h + 44);
    u32 rb_off = rd32(h + 52), rb_len = rd32(h + 56);
    ntypes = rd32(h + 60); types_off = rd32(h + 64); nfields_total = rd32(h + 68); fields_off = rd32(h + 72);
    names_off = rd32(h + 76); names_len = rd32(h + 80);
    nranges = rd32(h + 84); ranges_off = rd32(h + 88); bytes_off = rd32(h + 92); bytes_len = rd32(h + 96);
    nrtypes = rd32(h + 100); rtypes_off = rd32(h + 104);
    if (status != ST_OK) return status;
    if (!in_ok(types_off, (u64)ntypes * TYPE_REC) || !in_ok(fields_off, (u64)nfields_total * FIELD_REC) ||
        !in_ok(names_off, names_len) || !in_ok(ranges_off, (u64)nranges * 24) ||
        !in_ok(bytes_off, bytes_len) || !in_ok(rb_off, rb_len) || !in_ok(rtypes_off, (u64)nrtypes * 16)) {
        status = ST_MALFORMED; why = "a section outside the input"; return status;
    }
    Type t;
    if (!find_type(root, &t)) {
        if (status != ST_OK) return status;
        puts_("{\"__error\":\"type "); put_u64(root); puts_(" is not in the type table\"}");
        return status;
    }
    value(root, (flags & 1) ? in + rb_off : 0, rb_len, raddr, (flags & 2) != 0, 0);
    return status;
}

__attribute__((export_name("decode_at")))
u32 decode_at(u32 h) { return run_one(h, -1, 0); }

// The whole input is one value: the header at its start.
__attribute__((export_name("decode")))
u32 decode_input(void) { return run_one(0, -1, 0); }

// Both forms of one value in one call (the agent's path: one call into the
// module per value): plain, then raw right after it in the output. The
// answer is in `result`: status, plain length, raw length, bytes read,
// the reason (a pointer to text), the output's address, the reason's
// argument (a runtime type address the table lacks, for one).
static u64 result[7];

__attribute__((export_name("result_ptr"))) u32 result_ptr(void) { return (u32)(unsigned long)result; }

__attribute__((export_name("decode_both")))
u32 decode_both(u32 h) {
    u32 st = run_one(h, 0, 0);
    u32 n0 = out_len;
    u64 used0 = used;
    if (st == ST_OK)
        st = run_one(h, 1, n0);
    result[0] = st; result[1] = n0; result[2] = st == ST_OK ? out_len - n0 : 0; result[3] = used0;
    result[4] = (u32)(unsigned long)why; result[5] = (u32)(unsigned long)out; result[6] = why_arg;
    return st;
}

// Many values in one call (each header HDR bytes after the previous, each
// with its own budgets and root): what the agent does for all the values of
// a snapshot after the resume, one crossing into the module instead of one
// a value. Per value, in batch_result: status, plain length, raw length,
// bytes read; the outputs follow each other from the output's start. A
// value that is not OK has empty outputs, and the batch goes on.
#define BATCH_MAX 4096
static u64 batch_result[BATCH_MAX * 4];

__attribute__((export_name("batch_result_ptr"))) u32 batch_result_ptr(void) { return (u32)(unsigned long)batch_result; }

__attribute__((export_name("decode_batch")))
u32 decode_batch(u32 h, u32 count) {
    u32 at = 0, done = 0;
    if (count > BATCH_MAX) count = BATCH_MAX;
    for (u32 i = 0; i < count; i++) {
        u32 st = run_one(h + i * HDR, 0, at);
        u32 n0 = out_len - at;
        u64 used0 = used;
        if (st == ST_OK) st = run_one(h + i * HDR, 1, at + n0);
        u32 n1 = st == ST_OK ? out_len - at - n0 : 0;
        if (st != ST_OK) { n0 = 0; out_len = at; }
        batch_result[4 * i] = st; batch_result[4 * i + 1] = n0; batch_result[4 * i + 2] = n1;
        batch_result[4 * i + 3] = used0;
        at += n0 + n1;
        done++;
        if (st == ST_OUTPUT) break;          // the output is full: the rest is not decoded
    }
    return done;
}

