/* graph_state._native: Ripple's native core, over the graph's own Python objects and numpy blocks.
 *
 * Every function here has a Python reference beside it that stays the fallback (no compiler, or
 * RIPPLE_PURE_PYTHON=1); this module changes no layout and no result, and
 * tests/unit/graph_state/test_native.py holds each pair to the same bits on random inputs.
 *
 * apply does what UserGraph._apply does, bit for bit: the same float operations in the same
 * order, the same slot on eviction (the first least recent), the same edge order, the same ring.
 * Before it writes it asks UserGraph._reserve for owned blocks with room and the edge lookup (as
 * the Python path makes them on its way); anything it does not expect (a block of another layout,
 * a subclass of list or dict) returns None before changing anything, and the caller takes the
 * Python path. It keeps the item-id memo (a bytearray made by encode) up to date in place.
 *
 * encode writes graph_state.codec's version-2 record, byte for byte as msgspec and the Python
 * encoder do. gather builds a batch's columns from many graphs (graph_state.user_graph.gather);
 * take_rows / put_rows copy rows of many per-graph float32 arrays (graph_state.rows).
 *
 * Attributes of __slots__ types and int64 numpy blocks are read where they lie (get_attr,
 * nd_int64_2d: what PyObject_GetAttr and the buffer protocol would give, without their per-call
 * cost); anything else takes those calls.
 *
 * event_key is BLAKE2b with an 8-byte digest (RFC 7693), read as a signed little-endian int64:
 * what `hashlib.blake2b(data, digest_size=8)` gives.
 */
/* What graph_state.user_graph expects (its _NATIVE_API): a build of other sources is not used. */
#define NATIVE_API 9

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

/* ---- BLAKE2b, 8-byte digest, no key ---------------------------------------------------------- */

static const uint64_t B2_IV[8] = {
    0x6a09e667f3bcc908ULL, 0xbb67ae8584caa73bULL, 0x3c6ef372fe94f82bULL, 0xa54ff53a5f1d36f1ULL,
    0x510e527fade682d1ULL, 0x9b05688c2b3e6c1fULL, 0x1f83d9abfb41bd6bULL, 0x5be0cd19137e2179ULL,
};

static const uint8_t B2_SIGMA[12][16] = {
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
    {11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4},
    {7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8},
    {9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13},
    {2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9},
    {12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11},
    {13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10},
    {6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5},
    {10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0},
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
};

static inline uint64_t rotr64(uint64_t x, int n) { return (x >> n) | (x << (64 - n)); }

static inline uint64_t load64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

#define B2_G(a, b, c, d, x, y)       \
    do {                             \
        a = a + b + (x);             \
        d = rotr64(d ^ a, 32);       \
        c = c + d;                   \
        b = rotr64(b ^ c, 24);       \
        a = a + b + (y);             \
        d = rotr64(d ^ a, 16);       \
        c = c + d;                   \
        b = rotr64(b ^ c, 63);       \
    } while (0)

static void b2_compress(uint64_t h[8], const uint8_t block[128], uint64_t t, int last) {
    uint64_t m[16], v[16];
    for (int i = 0; i < 16; i++) m[i] = load64(block + 8 * i);
    for (int i = 0; i < 8; i++) {
        v[i] = h[i];
        v[i + 8] = B2_IV[i];
    }
    v[12] ^= t; /* the counter's high word stays 0: messages here are far below 2**64 bytes */
    if (last) v[14] = ~v[14];
    for (int r = 0; r < 12; r++) {
        const uint8_t *s = B2_SIGMA[r];
        B2_G(v[0], v[4], v[8], v[12], m[s[0]], m[s[1]]);
        B2_G(v[1], v[5], v[9], v[13], m[s[2]], m[s[3]]);
        B2_G(v[2], v[6], v[10], v[14], m[s[4]], m[s[5]]);
        B2_G(v[3], v[7], v[11], v[15], m[s[6]], m[s[7]]);
        B2_G(v[0], v[5], v[10], v[15], m[s[8]], m[s[9]]);
        B2_G(v[1], v[6], v[11], v[12], m[s[10]], m[s[11]]);
        B2_G(v[2], v[7], v[8], v[13], m[s[12]], m[s[13]]);
        B2_G(v[3], v[4], v[9], v[14], m[s[14]], m[s[15]]);
    }
    for (int i = 0; i < 8; i++) h[i] ^= v[i] ^ v[i + 8];
}

static int64_t blake2b_64(const uint8_t *data, Py_ssize_t len) {
    uint64_t h[8];
    uint8_t block[128];
    uint64_t t = 0;
    memcpy(h, B2_IV, sizeof h);
    h[0] ^= 0x01010000ULL ^ 8; /* fanout 1, depth 1, no key, 8-byte digest */
    while (len > 128) {
        t += 128;
        b2_compress(h, data, t, 0);
        data += 128;
        len -= 128;
    }
    memset(block, 0, sizeof block);
    if (len) memcpy(block, data, (size_t)len);
    t += (uint64_t)len;
    b2_compress(h, block, t, 1);
    return (int64_t)h[0]; /* the digest's 8 bytes are h[0] little-endian */
}

/* The key of a str event id (UTF-8), as event_key gives it; -1 with an exception set on error
 * (a key of -1 is told apart by PyErr_Occurred). */
static int64_t key_of(PyObject *event_id, int *failed) {
    Py_ssize_t size;
    const char *utf8 = PyUnicode_AsUTF8AndSize(event_id, &size);
    if (utf8 == NULL) {
        *failed = 1;
        return -1;
    }
    *failed = 0;
    return blake2b_64((const uint8_t *)utf8, size);
}

static PyObject *event_key(PyObject *self, PyObject *event_id) {
    if (!PyUnicode_Check(event_id)) {
        PyErr_Format(PyExc_TypeError, "event_id must be a str, not %.100s", Py_TYPE(event_id)->tp_name);
        return NULL;
    }
    int failed;
    int64_t key = key_of(event_id, &failed);
    if (failed) return NULL;
    return PyLong_FromLongLong(key);
}

/* ---- apply ---------------------------------------------------------------------------------- */

enum { COUNTS, LAST_SEEN, LAST_SEQ, LAST_ACTION, ACTION_MASK, WEIGHT_SUM, N_NODE_ROWS };

static PyObject *GraphChange;    /* graph_state.user_graph.GraphChange */
static PyObject *DUPLICATE;      /* GraphChange(duplicate=True) */
static PyObject *EMPTY_FROZEN;   /* frozenset() */
static PyObject *ZERO_FLOAT;     /* 0.0 */
static PyObject *AppliedEvents;  /* graph_state.user_graph.AppliedEvents */
static PyObject *UserDelta;      /* graph_state.user_graph.UserDelta */
static Py_ssize_t TAIL_LIMIT = 0;

#define NAMES(X)                                                                                  \
    X(_ring_set) X(config) X(state_version) X(last_ts) X(_writable) X(_slot_of) X(_n) X(_nodes)  \
    X(_edges) X(_ne) X(item_ids) X(ids_memo) X(_rows_owner) X(_rows) X(_stale_rows) X(_edge_at)  \
    X(last_slot) X(last_event_id) X(ring) X(ring_pos) X(saved) X(unsaved) X(max_lateness_s)      \
    X(_index) X(_weights) X(max_nodes) X(decay_seconds) X(dedupe_ring) X(event_id) X(item_id)    \
    X(action) X(ts) X(weight) X(other) X(append) X(discard) X(late_by) X(user_id) X(_apply) X(timestamp) \
    X(_cache_array) X(_cache_bytes) X(_node_views) X(_edge_views) X(nbytes)

#define DECLARE(name) static PyObject *s_##name;
NAMES(DECLARE)
#undef DECLARE

/* ---- attributes by slot offset --------------------------------------------------------------
 * PyObject_GetAttr on a __slots__ member goes getattro -> _PyType_Lookup -> the member descriptor ->
 * PyMember_GetOne, and apply reads some thirty an event (11 % of the runner's main process with
 * encode and gather, perf). For a type whose getattro (setattro) is the generic one and whose
 * attribute is an object member (T_OBJECT_EX), the slot at the member's offset holds what
 * PyObject_GetAttr would return: a data descriptor on the type comes before anything else. The
 * offset is cached per (type, name) and trusted only while the type keeps the version tag it was
 * read at (any change to the type drops the tag); everything else takes PyObject_GetAttr. */

#define MEMBER_CACHE 256
static struct {
    PyTypeObject *type;
    PyObject *name;
    unsigned int tag;
    Py_ssize_t get, set; /* the offset, or -1: the generic call */
} MEMBERS[MEMBER_CACHE];

static inline size_t member_at(PyTypeObject *tp, PyObject *name) {
    return (((uintptr_t)tp >> 4) * 31 + ((uintptr_t)name >> 4)) & (MEMBER_CACHE - 1);
}

static size_t member_fill(PyTypeObject *tp, PyObject *name) {
    size_t h = member_at(tp, name);
    MEMBERS[h].type = NULL;
    PyObject *descr = _PyType_Lookup(tp, name); /* borrowed; assigns the type a version tag */
    if (!(tp->tp_flags & Py_TPFLAGS_VALID_VERSION_TAG)) return h; /* not cached: the generic call */
    Py_ssize_t off = -1;
    int settable = 0;
    if (descr != NULL && Py_IS_TYPE(descr, &PyMemberDescr_Type)) {
        PyMemberDef *m = ((PyMemberDescrObject *)descr)->d_member;
        if (m->type == T_OBJECT_EX) {
            off = m->offset;
            settable = !(m->flags & READONLY);
        }
    }
    MEMBERS[h].get = off >= 0 && tp->tp_getattro == PyObject_GenericGetAttr ? off : -1;
    MEMBERS[h].set = off >= 0 && settable && tp->tp_setattro == PyObject_GenericSetAttr ? off : -1;
    MEMBERS[h].name = name;
    MEMBERS[h].tag = tp->tp_version_tag;
    MEMBERS[h].type = tp;
    return h;
}

static inline size_t member(PyTypeObject *tp, PyObject *name) {
    size_t h = member_at(tp, name);
    if (MEMBERS[h].type == tp && MEMBERS[h].name == name && (tp->tp_flags & Py_TPFLAGS_VALID_VERSION_TAG) &&
        MEMBERS[h].tag == tp->tp_version_tag)
        return h;
    return member_fill(tp, name);
}

/* PyObject_GetAttr(obj, name), read at the member's offset where that is the same. */
static PyObject *get_attr(PyObject *obj, PyObject *name) {
    PyTypeObject *tp = Py_TYPE(obj);
    size_t h = member(tp, name);
    if (MEMBERS[h].type == tp && MEMBERS[h].get >= 0) {
        PyObject *v = *(PyObject **)((char *)obj + MEMBERS[h].get);
        if (v != NULL) return Py_NewRef(v);
    }
    return PyObject_GetAttr(obj, name);
}

/* PyObject_SetAttr(obj, name, value) for a value (not a deletion), as PyMember_SetOne writes it. */
static int set_attr(PyObject *obj, PyObject *name, PyObject *value) {
    PyTypeObject *tp = Py_TYPE(obj);
    size_t h = member(tp, name);
    if (MEMBERS[h].type == tp && MEMBERS[h].set >= 0) {
        PyObject **slot = (PyObject **)((char *)obj + MEMBERS[h].set);
        PyObject *old = *slot;
        *slot = Py_NewRef(value);
        Py_XDECREF(old);
        return 0;
    }
    return PyObject_SetAttr(obj, name, value);
}

/* ---- numpy blocks without the buffer protocol ----------------------------------------------------
 * numpy's buffer export builds and compares a description of the array on every call (~5 % of the
 * main process: apply, encode and gather take ~6 an event). An exact ndarray of the builtin int64
 * dtype is read from its object (numpy's public PyArrayObject_fields, stable since numpy 1.7 and in
 * 2.x), after setup() checked that layout against the buffer protocol on arrays of its own;
 * anything else, or a numpy whose arrays did not match, takes PyObject_GetBuffer. */

typedef struct {
    PyObject_HEAD
    char *data;
    int nd;
    Py_ssize_t *dimensions;
    Py_ssize_t *strides;
    PyObject *base;
    PyObject *descr;
    int flags;
} NdFields;

#define ND_C_CONTIGUOUS 0x0001
#define ND_WRITEABLE 0x0400
#define ND_WARN_ON_WRITE ((int)(1u << 31))
static PyTypeObject *ND_TYPE = NULL; /* numpy.ndarray, once setup() checked its layout */
static PyObject *ND_INT64 = NULL;    /* numpy.dtype("int64") */

/* A 2-D C-contiguous int64 ndarray's data, rows and columns; 1, or 0 when it is not one this reads
 * directly (the caller takes the buffer protocol). `writable`: only an array numpy lets one write. */
static inline int nd_int64_2d(PyObject *array, int writable, int64_t **data, Py_ssize_t *rows, Py_ssize_t *cols) {
    if (ND_TYPE == NULL || !Py_IS_TYPE(array, ND_TYPE)) return 0;
    NdFields *a = (NdFields *)array;
    if (a->descr != ND_INT64 || a->nd != 2 || !(a->flags & ND_C_CONTIGUOUS)) return 0;
    if (writable && (!(a->flags & ND_WRITEABLE) || (a->flags & ND_WARN_ON_WRITE))) return 0;
    *data = (int64_t *)a->data;
    *rows = a->dimensions[0];
    *cols = a->dimensions[1];
    return 1;
}

/* setup()'s check: arrays of numpy's own, read both ways, agree; else the fast path stays off. */
static void nd_check(void) {
    PyObject *np = PyImport_ImportModule("numpy");
    PyObject *ndarray = np ? PyObject_GetAttrString(np, "ndarray") : NULL;
    PyObject *int64 = ndarray ? PyObject_CallMethod(np, "dtype", "s", "int64") : NULL;
    PyObject *a = int64 ? PyObject_CallMethod(np, "zeros", "((nn)O)", (Py_ssize_t)7, (Py_ssize_t)5, int64) : NULL;
    PyObject *ro = a ? PyObject_CallMethod(a, "view", NULL) : NULL;
    PyObject *flags = ro ? PyObject_GetAttrString(ro, "flags") : NULL;
    PyObject *all = flags ? PySlice_New(NULL, NULL, NULL) : NULL;
    PyObject *key = all ? Py_BuildValue("(On)", all, (Py_ssize_t)0) : NULL;
    PyObject *col = key ? PyObject_GetItem(a, key) : NULL; /* a[:, 0]: strided */
    int ok = 0;
    if (col != NULL && PyObject_SetAttrString(flags, "writeable", Py_False) == 0 &&
        Py_IS_TYPE(a, (PyTypeObject *)ndarray) && Py_IS_TYPE(ro, (PyTypeObject *)ndarray) &&
        Py_IS_TYPE(col, (PyTypeObject *)ndarray)) {
        Py_buffer v;
        if (PyObject_GetBuffer(a, &v, PyBUF_STRIDES | PyBUF_FORMAT | PyBUF_WRITABLE) == 0) {
            NdFields *f = (NdFields *)a, *r = (NdFields *)ro, *c = (NdFields *)col;
            ok = f->data == v.buf && f->nd == 2 && v.ndim == 2 && f->dimensions[0] == 7 && f->dimensions[1] == 5 &&
                 f->strides[0] == 40 && f->strides[1] == 8 && v.strides[0] == 40 && f->descr == int64 &&
                 (f->flags & ND_C_CONTIGUOUS) && (f->flags & ND_WRITEABLE) && !(f->flags & ND_WARN_ON_WRITE) &&
                 r->data == v.buf && r->descr == int64 && !(r->flags & ND_WRITEABLE) && c->nd == 1 &&
                 c->strides[0] == 40 && !(c->flags & ND_C_CONTIGUOUS);
            PyBuffer_Release(&v);
        }
    }
    PyErr_Clear(); /* whatever failed: the buffer protocol, as before */
    if (ok) {
        Py_XSETREF(ND_TYPE, (PyTypeObject *)Py_NewRef(ndarray));
        Py_XSETREF(ND_INT64, Py_NewRef(int64));
    }
    Py_XDECREF(col);
    Py_XDECREF(key);
    Py_XDECREF(all);
    Py_XDECREF(flags);
    Py_XDECREF(ro);
    Py_XDECREF(a);
    Py_XDECREF(int64);
    Py_XDECREF(ndarray);
    Py_XDECREF(np);
}

/* An int64 [rows, capacity] C-contiguous writable block (a numpy array) as a raw pointer. */
typedef struct {
    Py_buffer view;
    int64_t *data;
    Py_ssize_t capacity;
    int held;
} Block;

/* 1: got it; 0: not a block this code writes (the caller takes the Python path); -1: error. */
static int block_get(PyObject *array, Py_ssize_t rows, Block *b) {
    b->held = 0;
    Py_ssize_t n_rows;
    if (nd_int64_2d(array, 1, &b->data, &n_rows, &b->capacity)) return n_rows == rows;
    if (PyObject_GetBuffer(array, &b->view, PyBUF_STRIDES | PyBUF_WRITABLE | PyBUF_FORMAT) < 0) {
        if (PyErr_ExceptionMatches(PyExc_BufferError)) {
            PyErr_Clear();
            return 0;
        }
        return -1;
    }
    b->held = 1;
    const char *fmt = b->view.format;
    int is_q = fmt && (strcmp(fmt, "q") == 0 || strcmp(fmt, "<q") == 0 || strcmp(fmt, "=q") == 0 ||
                       strcmp(fmt, "l") == 0 || strcmp(fmt, "<l") == 0 || strcmp(fmt, "=l") == 0);
    if (!is_q || b->view.itemsize != 8 || b->view.ndim != 2 || b->view.shape[0] != rows ||
        b->view.strides[1] != 8 || b->view.strides[0] != 8 * b->view.shape[1]) {
        PyBuffer_Release(&b->view);
        b->held = 0;
        return 0;
    }
    b->data = (int64_t *)b->view.buf;
    b->capacity = b->view.shape[1];
    return 1;
}

static void block_release(Block *b) {
    if (b->held) PyBuffer_Release(&b->view);
    b->held = 0;
}

static inline double get_f(int64_t *row, Py_ssize_t i) {
    double d;
    memcpy(&d, row + i, 8);
    return d;
}

static inline void set_f(int64_t *row, Py_ssize_t i, double d) { memcpy(row + i, &d, 8); }

/* getattr as a C value; each returns -1 / NAN with an exception on failure. */
static Py_ssize_t attr_ssize(PyObject *obj, PyObject *name) {
    PyObject *v = get_attr(obj, name);
    if (v == NULL) return -1;
    Py_ssize_t r = PyLong_AsSsize_t(v);
    Py_DECREF(v);
    return r;
}

static double attr_double(PyObject *obj, PyObject *name) {
    PyObject *v = get_attr(obj, name);
    if (v == NULL) return -1.0;
    double r = PyFloat_AsDouble(v);
    Py_DECREF(v);
    return r;
}

static int set_ssize(PyObject *obj, PyObject *name, Py_ssize_t value) {
    PyObject *v = PyLong_FromSsize_t(value);
    if (v == NULL) return -1;
    int r = set_attr(obj, name, v);
    Py_DECREF(v);
    return r;
}

static int add_int(PyObject *set, long long value) {
    PyObject *v = PyLong_FromLongLong(value);
    if (v == NULL) return -1;
    int r = PySet_Add(set, v);
    Py_DECREF(v);
    return r;
}

static int add_pair(PyObject *set, long long a, long long b) {
    PyObject *t = Py_BuildValue("(LL)", a, b);
    if (t == NULL) return -1;
    int r = PySet_Add(set, t);
    Py_DECREF(t);
    return r;
}

/* Remove the slot's edges as UserGraph._evict does: the matching positions, highest first, each
 * hole filled with the current last edge; the edge lookup follows the moved edges. */
static int evict_edges(Block *e, Py_ssize_t *ne_io, Py_ssize_t slot, PyObject *at, PyObject *nodes,
                       PyObject *edges) {
    int64_t *src = e->data, *dst = e->data + e->capacity, *wgt = e->data + 2 * e->capacity;
    Py_ssize_t ne = *ne_io, n_gone = 0;
    Py_ssize_t *gone = PyMem_Malloc(sizeof(Py_ssize_t) * (ne ? ne : 1));
    if (gone == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < ne; i++)
        if (src[i] == slot || dst[i] == slot) gone[n_gone++] = i;
    int rc = 0;
    for (Py_ssize_t g = n_gone - 1; g >= 0 && rc == 0; g--) {
        Py_ssize_t pos = gone[g], last = ne - 1;
        int64_t s = src[pos], d = dst[pos];
        if (add_pair(edges, s, d) < 0 || add_int(nodes, s == slot ? d : s) < 0) {
            rc = -1;
            break;
        }
        PyObject *key = PyLong_FromLongLong((s << 32) | d);
        if (key == NULL || PyDict_DelItem(at, key) < 0) rc = -1;
        Py_XDECREF(key);
        if (rc) break;
        if (pos != last) {
            int64_t s2 = src[last], d2 = dst[last];
            src[pos] = s2;
            dst[pos] = d2;
            wgt[pos] = wgt[last]; /* the weight as its bits */
            PyObject *key2 = PyLong_FromLongLong((s2 << 32) | d2);
            PyObject *val = PyLong_FromSsize_t(pos);
            if (key2 == NULL || val == NULL || PyDict_SetItem(at, key2, val) < 0) rc = -1;
            Py_XDECREF(key2);
            Py_XDECREF(val);
        }
        ne = last;
    }
    PyMem_Free(gone);
    *ne_io = ne;
    return rc;
}

/* ---- the ids memo: the item ids as msgpack (graph_state.codec), kept up to date in place ------ */

/* Size of a msgpack str header for `size` bytes of UTF-8, and of an array header for `n` items. */
static inline Py_ssize_t str_head(Py_ssize_t size) { return size < 32 ? 1 : size <= 0xff ? 2 : size <= 0xffff ? 3 : 5; }
static inline Py_ssize_t array_head(Py_ssize_t n) { return n < 16 ? 1 : n <= 0xffff ? 3 : 5; }

static void put_be(char *at, uint64_t value, int width) {
    for (int i = 0; i < width; i++) at[i] = (char)(uint8_t)(value >> (8 * (width - 1 - i)));
}

static void put_str(char *at, const char *utf8, Py_ssize_t size) {
    Py_ssize_t h = str_head(size);
    if (h == 1) at[0] = (char)(0xa0 | size);
    else {
        at[0] = (char)(h == 2 ? 0xd9 : h == 3 ? 0xda : 0xdb);
        put_be(at + 1, (uint64_t)size, (int)h - 1);
    }
    memcpy(at + h, utf8, (size_t)size);
}

static void put_array_head(char *at, Py_ssize_t n) {
    Py_ssize_t h = array_head(n);
    if (h == 1) at[0] = (char)(0x90 | n);
    else {
        at[0] = (char)(h == 3 ? 0xdc : 0xdd);
        put_be(at + 1, (uint64_t)n, (int)h - 1);
    }
}

/* Bytes the str at `at` takes (header included), or -1 when `at` does not start a str. */
static Py_ssize_t str_span(const uint8_t *at, const uint8_t *end) {
    if (at >= end) return -1;
    uint8_t tag = at[0];
    Py_ssize_t h, size = 0;
    if ((tag & 0xe0) == 0xa0) return 1 + (tag & 0x1f);
    h = tag == 0xd9 ? 2 : tag == 0xda ? 3 : tag == 0xdb ? 5 : 0;
    if (!h || at + h > end) return -1;
    for (Py_ssize_t i = 1; i < h; i++) size = (size << 8) | at[i];
    return h + size;
}

/* After slot `slot` of a graph of `n_before` items took `item_id` (appended when slot == n_before):
 * the memo (a bytearray written by `encode`) changed in place; any other memo is dropped (None),
 * as the Python code drops it, and `encode` makes it again. 0, or -1 on error. */
static int memo_update(PyObject *graph, Py_ssize_t slot, Py_ssize_t n_before, PyObject *item_id) {
    PyObject *memo = get_attr(graph, s_ids_memo);
    if (memo == NULL) return -1;
    int kept = 0;
    Py_ssize_t size;
    /* A memo some msgspec.Raw still views (ob_exports) cannot change size: it is dropped instead. */
    int usable = PyByteArray_CheckExact(memo) && ((PyByteArrayObject *)memo)->ob_exports == 0 && PyUnicode_Check(item_id);
    const char *utf8 = usable ? PyUnicode_AsUTF8AndSize(item_id, &size) : NULL;
    if (utf8 == NULL && PyErr_Occurred()) {
        Py_DECREF(memo);
        return -1;
    }
    if (utf8 != NULL) {
        Py_ssize_t len = PyByteArray_GET_SIZE(memo), add = str_head(size) + size;
        uint8_t *buf = (uint8_t *)PyByteArray_AS_STRING(memo), *end = buf + len;
        if (slot == n_before) { /* a new item: the array's count grows, the id goes at the end */
            Py_ssize_t h_old = array_head(n_before), h_new = array_head(n_before + 1);
            if (PyByteArray_Resize(memo, len + (h_new - h_old) + add) == 0) {
                char *b = PyByteArray_AS_STRING(memo);
                if (h_new != h_old) memmove(b + h_new, b + h_old, (size_t)(len - h_old));
                put_array_head(b, n_before + 1);
                put_str(b + len + (h_new - h_old), utf8, size);
                kept = 1;
            }
        } else { /* an evicted item's slot: its str replaced by the new one's */
            const uint8_t *at = buf + array_head(n_before);
            for (Py_ssize_t i = 0; i < slot && at != NULL; i++) {
                Py_ssize_t span = str_span(at, end);
                at = span < 0 ? NULL : at + span;
            }
            Py_ssize_t old = at ? str_span(at, end) : -1;
            if (old >= 0 && at + old <= end) {
                Py_ssize_t start = at - buf, tail = len - start - old;
                if (add < old) memmove(buf + start + add, buf + start + old, (size_t)tail);
                if (PyByteArray_Resize(memo, len - old + add) == 0) {
                    char *b = PyByteArray_AS_STRING(memo);
                    if (add > old) memmove(b + start + add, b + start + old, (size_t)tail);
                    put_str(b + start, utf8, size);
                    kept = 1;
                }
            }
        }
        if (!kept && PyErr_Occurred()) {
            Py_DECREF(memo);
            return -1;
        }
    }
    Py_DECREF(memo);
    return kept ? 0 : set_attr(graph, s_ids_memo, Py_None);
}

/* ---- the dedupe ring ----------------------------------------------------------------------- */

/* Whether the ring (an array of signed 64-bit keys) holds `key`: 1, 0, or -1 on error. */
static int ring_scan(PyObject *graph, int64_t key) {
    PyObject *ring = get_attr(graph, s_ring);
    if (ring == NULL) return -1;
    Py_buffer view;
    int rc = PyObject_GetBuffer(ring, &view, PyBUF_SIMPLE);
    Py_DECREF(ring);
    if (rc < 0) return -1;
    const int64_t *keys = view.buf;
    Py_ssize_t count = view.len / 8;
    int found = 0;
    for (Py_ssize_t i = 0; i < count; i++) found |= keys[i] == key;
    PyBuffer_Release(&view);
    return found;
}

/* UserGraph._remember: append the key while the ring has room, else overwrite the oldest (at
 * ring_pos) and advance; `ring_set` (None unless the Python path built it) follows. 0 or -1. */
static int ring_remember(PyObject *graph, int64_t k, PyObject *key, Py_ssize_t size, PyObject *ring_set) {
    PyObject *ring = get_attr(graph, s_ring);
    if (ring == NULL) return -1;
    Py_ssize_t len = PyObject_Size(ring);
    int r = len < 0 ? -1 : 0;
    if (r == 0 && len < size) {
        PyObject *res = PyObject_CallMethodOneArg(ring, s_append, key);
        r = res ? 0 : -1;
        Py_XDECREF(res);
    } else if (r == 0) {
        Py_ssize_t pos = attr_ssize(graph, s_ring_pos);
        Py_buffer view;
        if ((pos == -1 && PyErr_Occurred()) || PyObject_GetBuffer(ring, &view, PyBUF_WRITABLE) < 0) {
            r = -1;
        } else if (pos < 0 || pos >= view.len / 8) {
            PyBuffer_Release(&view);
            PyErr_SetString(PyExc_IndexError, "ring_pos outside the ring");
            r = -1;
        } else {
            int64_t *keys = view.buf, old = keys[pos];
            keys[pos] = k;
            PyBuffer_Release(&view);
            if (ring_set != Py_None) {
                PyObject *old_obj = PyLong_FromLongLong(old);
                r = old_obj ? PySet_Discard(ring_set, old_obj) : -1;
                Py_XDECREF(old_obj);
            }
            if (r >= 0) r = set_ssize(graph, s_ring_pos, (pos + 1) % size);
        }
    }
    Py_DECREF(ring);
    if (r >= 0 && ring_set != Py_None) r = PySet_Add(ring_set, key);
    return r < 0 ? -1 : 0;
}

/* GraphChange(nodes, edges, evicted) made as its tuple directly (setup() checked the fields'
 * order): what the NamedTuple's __new__ would make, without a Python call per event. */
static PyObject *make_change(PyObject *nodes, PyObject *edges, PyObject *evicted) {
    PyTypeObject *tp = (PyTypeObject *)GraphChange;
    PyObject *t = tp->tp_alloc(tp, 5);
    if (t == NULL) return NULL;
    PyTuple_SET_ITEM(t, 0, Py_NewRef(nodes));
    PyTuple_SET_ITEM(t, 1, Py_NewRef(PySet_GET_SIZE(edges) ? edges : EMPTY_FROZEN));
    PyTuple_SET_ITEM(t, 2, Py_NewRef(evicted));
    PyTuple_SET_ITEM(t, 3, Py_NewRef(Py_False));
    PyTuple_SET_ITEM(t, 4, Py_NewRef(ZERO_FLOAT));
    return t;
}

/* UserDelta(base_version, slots) made as its tuple directly (setup() checked the fields' order). */
static PyObject *make_delta(PyObject *base_version, PyObject *slots) {
    PyTypeObject *tp = (PyTypeObject *)UserDelta;
    PyObject *t = tp->tp_alloc(tp, 2);
    if (t == NULL) return NULL;
    PyTuple_SET_ITEM(t, 0, Py_NewRef(base_version));
    PyTuple_SET_ITEM(t, 1, Py_NewRef(slots));
    return t;
}

/* The last GraphConfig's values (a frozen dataclass; every graph of a run shares one): read once,
 * not six attribute lookups per event. Holding a reference keeps its address from being reused. */
static struct {
    PyObject *cfg, *index, *weights;
    double lateness, decay;
    Py_ssize_t max_nodes, ring_size;
} CFG = {NULL, NULL, NULL, 0.0, 0.0, 0, 0};

static int config_values(PyObject *cfg) {
    if (cfg == CFG.cfg) return 0;
    double lateness = attr_double(cfg, s_max_lateness_s);
    if (lateness == -1.0 && PyErr_Occurred()) return -1;
    double decay = attr_double(cfg, s_decay_seconds);
    if (decay == -1.0 && PyErr_Occurred()) return -1;
    Py_ssize_t max_nodes = attr_ssize(cfg, s_max_nodes);
    if (max_nodes == -1 && PyErr_Occurred()) return -1;
    Py_ssize_t ring_size = attr_ssize(cfg, s_dedupe_ring);
    if (ring_size == -1 && PyErr_Occurred()) return -1;
    PyObject *index = get_attr(cfg, s__index);
    PyObject *weights = index ? get_attr(cfg, s__weights) : NULL;
    if (weights == NULL) {
        Py_XDECREF(index);
        return -1;
    }
    Py_XSETREF(CFG.index, index);
    Py_XSETREF(CFG.weights, weights);
    Py_XSETREF(CFG.cfg, Py_NewRef(cfg));
    CFG.lateness = lateness, CFG.decay = decay, CFG.max_nodes = max_nodes, CFG.ring_size = ring_size;
    return 0;
}

/* UserGraph._apply for one event: a new GraphChange, None (the caller takes the Python path), or
 * NULL with an exception. */
static PyObject *apply_one(PyObject *graph, PyObject *event, int replay) {

    /* Everything fetched here is released at `done`. */
    PyObject *result = NULL, *event_id = NULL, *ring_set = NULL, *key = NULL, *cfg = NULL;
    PyObject *item_id = NULL, *action_name = NULL, *weight_obj = NULL, *slot_of = NULL, *item_ids = NULL;
    PyObject *edge_at = NULL, *nodes = NULL, *edges = NULL, *evicted = NULL, *rows_owner = NULL;
    PyObject *nodes_arr = NULL, *edges_arr = NULL, *slot_obj = NULL, *index = NULL, *weights = NULL;
    Block nb = {.held = 0}, eb = {.held = 0};
    int failed;

    event_id = get_attr(event, s_event_id);
    if (event_id == NULL) goto done;
    if (!PyUnicode_Check(event_id)) {
        PyErr_SetString(PyExc_TypeError, "event_id must be a str");
        goto done;
    }
    int64_t k = key_of(event_id, &failed);
    if (failed) goto done;
    key = PyLong_FromLongLong(k);
    if (key == NULL) goto done;
    /* Seen: in the ring's set when the Python path built one, else a scan of the ring itself (2 KiB
     * of contiguous keys: no set of 256 int objects per graph, a sixth of a small graph's memory). */
    ring_set = get_attr(graph, s__ring_set);
    if (ring_set == NULL) goto done;
    int seen = ring_set == Py_None ? ring_scan(graph, k) : PySet_Contains(ring_set, key);
    if (seen < 0) goto done;
    if (seen) {
        result = Py_NewRef(DUPLICATE);
        goto done;
    }
    cfg = get_attr(graph, s_config);
    if (cfg == NULL || config_values(cfg) < 0) goto done;
    PyObject *ts_obj = get_attr(event, s_ts);
    PyObject *ts_float = ts_obj ? PyNumber_Float(ts_obj) : NULL; /* float(event.ts) */
    Py_XDECREF(ts_obj);
    if (ts_float == NULL) goto done;
    double ts = PyFloat_AS_DOUBLE(ts_float);
    Py_DECREF(ts_float);
    Py_ssize_t version = attr_ssize(graph, s_state_version);
    if (version == -1 && PyErr_Occurred()) goto done;
    double last_ts = attr_double(graph, s_last_ts);
    if (last_ts == -1.0 && PyErr_Occurred()) goto done;
    double lateness = CFG.lateness;
    if (version && ts < last_ts - lateness && !replay) {
        PyObject *kwargs = Py_BuildValue("{s:d}", "late_by", last_ts - ts);
        if (kwargs == NULL) goto done;
        PyObject *empty = PyTuple_New(0);
        if (empty != NULL) result = PyObject_Call(GraphChange, empty, kwargs);
        Py_XDECREF(empty);
        Py_DECREF(kwargs);
        goto done;
    }

    /* From here on the graph changes; first make sure this path can do all of it. */
    Py_ssize_t n = attr_ssize(graph, s__n), ne = attr_ssize(graph, s__ne);
    if ((n == -1 || ne == -1) && PyErr_Occurred()) goto done;
    Py_ssize_t max_nodes = CFG.max_nodes;
    item_id = get_attr(event, s_item_id);
    slot_of = item_id ? get_attr(graph, s__slot_of) : NULL;
    if (slot_of == NULL) goto done;
    if (!PyDict_CheckExact(slot_of)) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    slot_obj = PyDict_GetItemWithError(slot_of, item_id); /* borrowed */
    if (slot_obj == NULL && PyErr_Occurred()) goto done;
    Py_XINCREF(slot_obj);
    int writable = 0;
    PyObject *w = get_attr(graph, s__writable);
    if (w == NULL) goto done;
    writable = PyObject_IsTrue(w);
    Py_DECREF(w);
    if (writable < 0) goto done;
    edge_at = get_attr(graph, s__edge_at);
    if (edge_at == NULL) goto done;
    nodes_arr = get_attr(graph, s__nodes);
    edges_arr = nodes_arr ? get_attr(graph, s__edges) : NULL;
    if (edges_arr == NULL) goto done;
    /* Room for a new node and (whether or not the event adds one) an edge, blocks of the graph's own
     * and its edge lookup: UserGraph._reserve makes them, as the Python path would on its way. */
    Py_ssize_t need = (slot_obj == NULL && n < max_nodes) ? n + 1 : n;
    int got = writable ? block_get(nodes_arr, N_NODE_ROWS, &nb) : 0;
    if (got == 1) got = block_get(edges_arr, 3, &eb);
    if (got < 0) goto done;
    if (!writable || !PyDict_CheckExact(edge_at) || got == 0 || nb.capacity < need || eb.capacity <= ne) {
        block_release(&nb);
        block_release(&eb);
        PyObject *res = PyObject_CallMethod(graph, "_reserve", "nn", need, ne + 1);
        if (res == NULL) goto done;
        Py_DECREF(res);
        Py_SETREF(edge_at, get_attr(graph, s__edge_at));
        Py_SETREF(nodes_arr, get_attr(graph, s__nodes));
        Py_SETREF(edges_arr, nodes_arr ? get_attr(graph, s__edges) : NULL);
        if (edge_at == NULL || edges_arr == NULL) goto done;
        got = block_get(nodes_arr, N_NODE_ROWS, &nb);
        if (got == 1) got = block_get(edges_arr, 3, &eb);
        if (got < 0) goto done;
        if (got == 0 || !PyDict_CheckExact(edge_at) || nb.capacity < need || eb.capacity <= ne) {
            result = Py_NewRef(Py_None); /* not blocks this code writes: the Python path */
            goto done;
        }
    }

    /* The action's index and weight (GraphConfig.action_index / action_weight). */
    index = Py_NewRef(CFG.index);
    weights = Py_NewRef(CFG.weights);
    action_name = get_attr(event, s_action);
    if (action_name == NULL) goto done;
    if (!PyDict_CheckExact(index) || !PyList_CheckExact(weights)) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    PyObject *found_action = PyDict_GetItemWithError(index, action_name);
    if (found_action == NULL) {
        if (PyErr_Occurred()) goto done;
        found_action = PyDict_GetItemWithError(index, s_other);
        if (found_action == NULL) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_KeyError, "other");
            goto done;
        }
    }
    Py_ssize_t action = PyLong_AsSsize_t(found_action);
    if (action == -1 && PyErr_Occurred()) goto done;
    if (action < 0 || action >= PyList_GET_SIZE(weights) || action > 62) {
        PyErr_SetString(PyExc_IndexError, "action index outside the action weights");
        goto done;
    }
    double weight = PyFloat_AsDouble(PyList_GET_ITEM(weights, action));
    if (weight == -1.0 && PyErr_Occurred()) goto done;
    weight_obj = get_attr(event, s_weight);
    if (weight_obj == NULL) goto done;
    if (weight_obj != Py_None) {
        PyObject *given = PyNumber_Float(weight_obj); /* float(event.weight) */
        if (given == NULL) goto done;
        weight = weight * PyFloat_AS_DOUBLE(given);
        Py_DECREF(given);
    } else {
        weight = weight * 1.0;
    }
    double decay = CFG.decay;
    Py_ssize_t ring_size = CFG.ring_size;
    Py_ssize_t last_slot = attr_ssize(graph, s_last_slot);
    if (last_slot == -1 && PyErr_Occurred()) goto done;
    item_ids = get_attr(graph, s_item_ids);
    rows_owner = item_ids ? get_attr(graph, s__rows_owner) : NULL;
    if (rows_owner == NULL) goto done;
    if (!PyList_CheckExact(item_ids)) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    /* Filled while brand new (PySet_Add allows it for a frozenset no one else holds yet). */
    nodes = PyFrozenSet_New(NULL);
    edges = nodes ? PyFrozenSet_New(NULL) : NULL;
    if (edges == NULL) goto done;

    int64_t *nd = nb.data;
    Py_ssize_t cap = nb.capacity;
    Py_ssize_t slot;
    int fresh_slot = 0; /* a new or reused slot: the rows memo must refresh it */
    if (slot_obj != NULL) {
        slot = PyLong_AsSsize_t(slot_obj);
        if (slot == -1 && PyErr_Occurred()) goto done;
    } else if (n < max_nodes) {
        slot = n; /* UserGraph._new_slot */
        for (int r = 0; r < N_NODE_ROWS; r++) nd[r * cap + slot] = 0;
        if (PyList_Append(item_ids, item_id) < 0) goto done;
        if (memo_update(graph, slot, n, item_id) < 0) goto done;
        n = slot + 1;
        if (set_ssize(graph, s__n, n) < 0) goto done;
        PyObject *v = PyLong_FromSsize_t(slot);
        if (v == NULL) goto done;
        int r = PyDict_SetItem(slot_of, item_id, v);
        Py_DECREF(v);
        if (r < 0) goto done;
        fresh_slot = 1;
    } else {
        /* The first least recently seen node (ndarray.argmin), evicted: UserGraph._evict + _reset_slot. */
        int64_t *seq = nd + LAST_SEQ * cap;
        slot = 0;
        for (Py_ssize_t i = 1; i < n; i++)
            if (seq[i] < seq[slot]) slot = i;
        evicted = Py_NewRef(PyList_GET_ITEM(item_ids, slot));
        if (evict_edges(&eb, &ne, slot, edge_at, nodes, edges) < 0) goto done;
        if (set_ssize(graph, s__ne, ne) < 0) goto done;
        if (last_slot == slot) {
            last_slot = -1;
            if (set_ssize(graph, s_last_slot, -1) < 0) goto done;
        }
        if (PyDict_DelItem(slot_of, evicted) < 0) goto done;
        if (PyList_SetItem(item_ids, slot, Py_NewRef(item_id)) < 0) goto done; /* steals the new ref */
        if (memo_update(graph, slot, n, item_id) < 0) goto done;
        for (int r = 0; r < N_NODE_ROWS; r++) nd[r * cap + slot] = 0;
        PyObject *v = PyLong_FromSsize_t(slot);
        if (v == NULL) goto done;
        int r = PyDict_SetItem(slot_of, item_id, v);
        Py_DECREF(v);
        if (r < 0) goto done;
        fresh_slot = 2;
    }
    if (fresh_slot && rows_owner != Py_None) {
        PyObject *rows = get_attr(graph, s__rows);
        if (rows == NULL) goto done;
        PyObject *stale = get_attr(graph, s__stale_rows);
        PyObject *minus = PyLong_FromLong(-1);
        PyObject *v = PyLong_FromSsize_t(slot);
        int r = -1;
        if (stale != NULL && minus != NULL && v != NULL) {
            PyObject *done_call = fresh_slot == 1 ? PyObject_CallMethodOneArg(rows, s_append, minus) : NULL;
            if (fresh_slot == 1) {
                r = done_call ? 0 : -1;
                Py_XDECREF(done_call);
            } else {
                r = PyObject_SetItem(rows, v, minus);
            }
            if (r == 0) r = PyList_Append(stale, v);
        }
        Py_DECREF(rows);
        Py_XDECREF(stale);
        Py_XDECREF(minus);
        Py_XDECREF(v);
        if (r < 0) goto done;
    }
    if (add_int(nodes, slot) < 0) goto done;
    nd[COUNTS * cap + slot] += 1;
    set_f(nd + LAST_SEEN * cap, slot, ts);
    nd[LAST_SEQ * cap + slot] = (int64_t)version + 1;
    nd[LAST_ACTION * cap + slot] = action;
    nd[ACTION_MASK * cap + slot] = (int64_t)((uint64_t)nd[ACTION_MASK * cap + slot] | ((uint64_t)1 << action));
    set_f(nd + WEIGHT_SUM * cap, slot, get_f(nd + WEIGHT_SUM * cap, slot) + weight);

    Py_ssize_t prev = last_slot;
    if (prev >= 0 && prev != slot) {
        double diff = ts - last_ts;
        double gap = diff > 0.0 ? diff : 0.0; /* max(0.0, diff) */
        double added = weight * exp(-gap / decay);
        int64_t *src = eb.data, *dst = eb.data + eb.capacity, *wgt = eb.data + 2 * eb.capacity;
        PyObject *ek = PyLong_FromLongLong(((long long)prev << 32) | slot);
        if (ek == NULL) goto done;
        PyObject *at = PyDict_GetItemWithError(edge_at, ek); /* borrowed */
        if (at == NULL && PyErr_Occurred()) {
            Py_DECREF(ek);
            goto done;
        }
        if (at != NULL) {
            Py_ssize_t pos = PyLong_AsSsize_t(at);
            if (pos < 0 || pos >= ne) {
                Py_DECREF(ek);
                if (!PyErr_Occurred()) PyErr_SetString(PyExc_IndexError, "edge lookup points outside the edges");
                goto done;
            }
            set_f(wgt, pos, get_f(wgt, pos) + added);
        } else {
            /* ne < capacity: checked above (an eviction only lowers it) */
            src[ne] = prev;
            dst[ne] = slot;
            set_f(wgt, ne, added);
            PyObject *v = PyLong_FromSsize_t(ne);
            int r = v ? PyDict_SetItem(edge_at, ek, v) : -1;
            Py_XDECREF(v);
            if (r < 0) {
                Py_DECREF(ek);
                goto done;
            }
            ne += 1;
            if (set_ssize(graph, s__ne, ne) < 0) {
                Py_DECREF(ek);
                goto done;
            }
        }
        Py_DECREF(ek);
        if (add_pair(edges, prev, slot) < 0 || add_int(nodes, prev) < 0) goto done;
    }

    if (set_ssize(graph, s_last_slot, slot) < 0) goto done;
    PyObject *ts_value = PyFloat_FromDouble(ts);
    if (ts_value == NULL) goto done;
    int r = set_attr(graph, s_last_ts, ts_value);
    Py_DECREF(ts_value);
    if (r < 0 || set_attr(graph, s_last_event_id, event_id) < 0) goto done;
    if (set_ssize(graph, s_state_version, version + 1) < 0) goto done;

    /* UserGraph._remember (and its set, when the Python path built one) */
    r = ring_remember(graph, k, key, ring_size, ring_set);
    if (r < 0) goto done;

    /* The store's tail (UserGraph.saved.unsaved). */
    PyObject *saved = get_attr(graph, s_saved);
    if (saved == NULL) goto done;
    if (saved != Py_None) {
        PyObject *unsaved = get_attr(saved, s_unsaved);
        r = unsaved ? 0 : -1;
        if (unsaved != NULL && unsaved != Py_None) {
            if (!PyList_Check(unsaved)) {
                PyErr_SetString(PyExc_TypeError, "saved.unsaved must be a list");
                r = -1;
            } else if (PyList_GET_SIZE(unsaved) < TAIL_LIMIT) {
                PyObject *row = Py_BuildValue("(OOOdO)", event_id, item_id, action_name, ts, weight_obj);
                r = row ? PyList_Append(unsaved, row) : -1;
                Py_XDECREF(row);
            } else {
                r = set_attr(saved, s_unsaved, Py_None);
            }
        }
        Py_XDECREF(unsaved);
    }
    Py_DECREF(saved);
    if (r < 0) goto done;

    result = make_change(nodes, edges, evicted ? evicted : Py_None);

done:
    block_release(&nb);
    block_release(&eb);
    Py_XDECREF(event_id);
    Py_XDECREF(ring_set);
    Py_XDECREF(key);
    Py_XDECREF(cfg);
    Py_XDECREF(item_id);
    Py_XDECREF(action_name);
    Py_XDECREF(weight_obj);
    Py_XDECREF(slot_of);
    Py_XDECREF(item_ids);
    Py_XDECREF(edge_at);
    Py_XDECREF(nodes);
    Py_XDECREF(edges);
    Py_XDECREF(evicted);
    Py_XDECREF(rows_owner);
    Py_XDECREF(nodes_arr);
    Py_XDECREF(edges_arr);
    Py_XDECREF(slot_obj);
    Py_XDECREF(index);
    Py_XDECREF(weights);
    return result;
}

static int ready(void) {
    if (GraphChange != NULL) return 1;
    PyErr_SetString(PyExc_RuntimeError, "graph_state._native.setup() was not called");
    return 0;
}

static PyObject *apply(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "apply(graph, event, replay)");
        return NULL;
    }
    int replay = PyObject_IsTrue(args[2]);
    if (replay < 0 || !ready()) return NULL;
    return apply_one(args[0], args[1], replay);
}

/* ---- prefetching the graphs a batch is about to touch ------------------------------------------
 * A micro-batch touches each user's graph about once, and a graph was last touched ~40 batches ago:
 * its objects (blocks, lookups, lists, scalars) are out of every cache, and each read of one waits
 * for memory. apply_events asks for them a few events ahead, in three steps (the graph, the objects
 * its slots hold, what those point to), so the waits overlap. Prefetches are hints: a wrong address
 * costs nothing, so the buffers are found by layout (numpy's and array's object begins with its data
 * pointer after the object header, as a list's does). */

#define N_AHEAD_FIELDS 13
static const char *AHEAD_FIELDS[N_AHEAD_FIELDS] = {
    "ring", "_slot_of", "_edge_at", "_nodes", "_edges", "item_ids", "ids_memo",
    "last_ts", "state_version", "saved", "_rows", "_stale_rows", "_ne"};
static PyTypeObject *AHEAD_TYPE = NULL; /* the graph type whose slot offsets AHEAD_OFF holds */
static Py_ssize_t AHEAD_OFF[N_AHEAD_FIELDS];
static PyTypeObject *NDARRAY = NULL, *PYARRAY = NULL;

typedef struct {
    PyObject_HEAD
    char *data;
} NdarrayHead; /* numpy's PyArrayObject_fields begins so */

/* The slot offsets of `graph`'s type (member descriptors): 1, or 0 when it has none to read. */
static int ahead_setup(PyObject *graph) {
    PyTypeObject *tp = Py_TYPE(graph);
    if (tp == AHEAD_TYPE) return 1;
    for (int k = 0; k < N_AHEAD_FIELDS; k++) {
        PyObject *d = PyObject_GetAttrString((PyObject *)tp, AHEAD_FIELDS[k]);
        if (d == NULL || !Py_IS_TYPE(d, &PyMemberDescr_Type)) {
            Py_XDECREF(d);
            PyErr_Clear();
            return 0;
        }
        AHEAD_OFF[k] = ((PyMemberDescrObject *)d)->d_member->offset;
        Py_DECREF(d);
    }
    PyObject *nodes = *(PyObject **)((char *)graph + AHEAD_OFF[3]), *ring = *(PyObject **)((char *)graph + AHEAD_OFF[0]);
    if (nodes != NULL && strcmp(Py_TYPE(nodes)->tp_name, "numpy.ndarray") == 0) NDARRAY = Py_TYPE(nodes);
    if (ring != NULL && strcmp(Py_TYPE(ring)->tp_name, "array.array") == 0) PYARRAY = Py_TYPE(ring);
    Py_INCREF(tp); /* kept: the offsets are its */
    Py_XSETREF(AHEAD_TYPE, tp);
    return 1;
}

static inline void ahead_graph(PyObject *g) {
    for (int line = 0; line < 4; line++) __builtin_prefetch((char *)g + 64 * line);
}

static inline void ahead_fields(PyObject *g) {
    if (!Py_IS_TYPE(g, AHEAD_TYPE)) return;
    for (int k = 0; k < N_AHEAD_FIELDS; k++) {
        PyObject *o = *(PyObject **)((char *)g + AHEAD_OFF[k]);
        if (o != NULL) __builtin_prefetch(o);
    }
}

static inline void ahead_lines(const void *at, int lines) {
    for (int line = 0; line < lines; line++) __builtin_prefetch((const char *)at + 64 * line);
}

/* The first lines of each buffer: a small graph's whole blocks (7 and 3 rows of its capacity), its
 * lookups' tables, the start of its dedupe ring. */
static inline void ahead_buffers(PyObject *g) {
    if (!Py_IS_TYPE(g, AHEAD_TYPE)) return;
    for (int k = 0; k < N_AHEAD_FIELDS; k++) {
        PyObject *o = *(PyObject **)((char *)g + AHEAD_OFF[k]);
        if (o == NULL) continue;
        PyTypeObject *t = Py_TYPE(o);
        if (t == &PyDict_Type) {
            ahead_lines(((PyDictObject *)o)->ma_keys, 4);
        } else if (t == &PyList_Type) {
            ahead_lines(((PyListObject *)o)->ob_item, 1);
        } else if (t == PYARRAY && t != NULL) {
            ahead_lines(((PyListObject *)o)->ob_item, 4);
        } else if (t == NDARRAY && t != NULL) {
            ahead_lines(((NdarrayHead *)o)->data, 16);
        } else if (t == &PyByteArray_Type) {
            ahead_lines(PyByteArray_AS_STRING(o), 2);
        }
    }
}

/* graph_state.user_graph.py_apply_events in C: the same dicts filled in the same order, the same
 * counts; each event through apply_one (UserGraph._apply where that declines). */
static PyObject *apply_events(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 9) {
        PyErr_SetString(PyExc_TypeError,
                        "apply_events(pairs, graphs, factory, known, publish, applied, restore, changed, earliest)");
        return NULL;
    }
    if (!ready()) return NULL;
    PyObject *graphs = args[1], *factory = args[2], *known = args[3], *publish = args[4];
    PyObject *applied = args[5], *restore = args[6], *changed = args[7], *earliest = args[8];
    if (!PyDict_CheckExact(graphs) || !PyDict_CheckExact(publish) || !PyDict_CheckExact(applied) ||
        !PyDict_CheckExact(restore) || !PyDict_CheckExact(changed) || !PyDict_CheckExact(earliest)) {
        PyErr_SetString(PyExc_TypeError, "apply_events takes a sequence of (record, event) pairs and dicts");
        return NULL;
    }
    PyObject *pairs = PySequence_Fast(args[0], "apply_events takes a sequence of (record, event) pairs");
    if (pairs == NULL) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(pairs);
    PyObject *late = PyList_New(0);
    /* Each event's graph where it has one already (borrowed: the dict holds them), for prefetching. */
    PyObject **ahead = late ? PyMem_Calloc(n ? n : 1, sizeof(PyObject *)) : NULL;
    if (ahead == NULL) {
        Py_DECREF(pairs);
        Py_XDECREF(late);
        return late ? PyErr_NoMemory() : NULL;
    }
    int prefetching = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *pair = PySequence_Fast_GET_ITEM(pairs, i);
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) break; /* the loop below refuses it */
        PyObject *uid = get_attr(PyTuple_GET_ITEM(pair, 1), s_user_id);
        if (uid == NULL) {
            PyErr_Clear(); /* the loop below raises it */
            break;
        }
        ahead[i] = PyDict_GetItemWithError(graphs, uid);
        Py_DECREF(uid);
        if (ahead[i] == NULL) PyErr_Clear();
        else if (!prefetching) prefetching = ahead_setup(ahead[i]);
    }
    Py_ssize_t n_applied = 0, n_duplicate = 0, n_unknown = 0, n_new = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (prefetching) {
            if (i + 3 < n && ahead[i + 3] != NULL) ahead_graph(ahead[i + 3]);
            if (i + 2 < n && ahead[i + 2] != NULL) ahead_fields(ahead[i + 2]);
            if (i + 1 < n && ahead[i + 1] != NULL) ahead_buffers(ahead[i + 1]);
        }
        PyObject *pair = PySequence_Fast_GET_ITEM(pairs, i);
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
            PyErr_SetString(PyExc_TypeError, "apply_events takes a sequence of (record, event) pairs");
            goto fail;
        }
        PyObject *record = PyTuple_GET_ITEM(pair, 0), *event = PyTuple_GET_ITEM(pair, 1);
        PyObject *uid = get_attr(event, s_user_id);
        if (uid == NULL) goto fail;
        PyObject *graph = PyDict_GetItemWithError(graphs, uid); /* borrowed */
        if (graph == NULL) {
            if (PyErr_Occurred() || (graph = PyObject_CallNoArgs(factory)) == NULL) {
                Py_DECREF(uid);
                goto fail;
            }
            int r = PyDict_SetItem(graphs, uid, graph);
            Py_DECREF(graph); /* the dict holds it */
            if (r < 0) {
                Py_DECREF(uid);
                goto fail;
            }
            n_new++;
        }
        Py_INCREF(graph);
        /* The user's delta so far; at its first event in the batch, the version the delta starts from. */
        PyObject *before = PyDict_GetItemWithError(changed, uid);
        PyObject *base = NULL;
        if (before != NULL && Py_TYPE(before) != (PyTypeObject *)UserDelta) {
            PyErr_SetString(PyExc_TypeError, "apply_events keeps UserDelta values in its changed dict");
            before = NULL;
        } else if (before != NULL) {
            Py_INCREF(before);
        } else if (!PyErr_Occurred()) {
            base = get_attr(graph, s_state_version);
        }
        if (before == NULL && base == NULL) {
            Py_DECREF(graph);
            Py_DECREF(uid);
            goto fail;
        }
        PyObject *change = apply_one(graph, event, 0);
        if (change == Py_None) {
            Py_DECREF(change);
            change = PyObject_CallMethodObjArgs(graph, s__apply, event, Py_False, NULL);
        }
        int rc = -1;
        if (change != NULL && (!PyTuple_Check(change) || PyTuple_GET_SIZE(change) != 5)) {
            PyErr_SetString(PyExc_TypeError, "UserGraph.apply must return a GraphChange");
        } else if (change != NULL) {
            int is_late = PyObject_IsTrue(PyTuple_GET_ITEM(change, 4));
            int duplicate = is_late ? 0 : PyObject_IsTrue(PyTuple_GET_ITEM(change, 3));
            if (is_late > 0) {
                PyObject *entry = Py_BuildValue("(nO)", i, PyTuple_GET_ITEM(change, 4));
                rc = entry ? PyList_Append(late, entry) : -1;
                Py_XDECREF(entry);
            } else if (is_late == 0 && duplicate >= 0) {
                PyObject *nodes = PyTuple_GET_ITEM(change, 0);
                PyObject *merged = before == NULL ? Py_NewRef(nodes) : PyNumber_Or(PyTuple_GET_ITEM(before, 1), nodes);
                PyObject *delta = merged ? make_delta(before == NULL ? base : PyTuple_GET_ITEM(before, 0), merged) : NULL;
                rc = delta ? PyDict_SetItem(changed, uid, delta) : -1;
                Py_XDECREF(merged);
                Py_XDECREF(delta);
                if (rc == 0 && duplicate) {
                    n_duplicate++;
                    PyObject *event_id = get_attr(event, s_event_id);
                    PyObject *last = event_id ? get_attr(graph, s_last_event_id) : NULL;
                    int same = last ? PyObject_RichCompareBool(event_id, last, Py_EQ) : -1;
                    Py_XDECREF(event_id);
                    Py_XDECREF(last);
                    rc = same < 0 ? -1 : 0;
                    if (same > 0 && (PyDict_SetItem(publish, uid, graph) < 0 || PyDict_SetItem(restore, uid, graph) < 0))
                        rc = -1;
                } else if (rc == 0) {
                    n_applied++;
                    PyObject *action = get_attr(event, s_action);
                    int is_known = action ? PySequence_Contains(known, action) : -1;
                    Py_XDECREF(action);
                    if (is_known == 0) n_unknown++;
                    if (is_known < 0 || PyDict_SetItem(applied, uid, graph) < 0 || PyDict_SetItem(publish, uid, graph) < 0)
                        rc = -1;
                    PyObject *ts = rc == 0 ? get_attr(record, s_timestamp) : NULL;
                    if (ts == NULL) {
                        rc = -1;
                    } else if (ts != Py_None) {
                        PyObject *first = PyDict_GetItemWithError(earliest, uid); /* borrowed */
                        int earlier = first == NULL ? (PyErr_Occurred() ? -1 : 1) : PyObject_RichCompareBool(ts, first, Py_LT);
                        if (earlier < 0 || (earlier > 0 && PyDict_SetItem(earliest, uid, ts) < 0)) rc = -1;
                    }
                    Py_XDECREF(ts);
                }
            }
        }
        Py_XDECREF(change);
        Py_XDECREF(before);
        Py_XDECREF(base);
        Py_DECREF(graph);
        Py_DECREF(uid);
        if (rc < 0) goto fail;
    }
    PyMem_Free(ahead);
    Py_DECREF(pairs);
    return PyObject_CallFunction(AppliedEvents, "nnnnN", n_applied, n_duplicate, n_unknown, n_new, late);
fail:
    PyMem_Free(ahead);
    Py_DECREF(pairs);
    Py_DECREF(late);
    return NULL;
}

/* ---- encode: a graph's version-2 record (graph_state.codec.encode) ------------------------- */


typedef struct {
    char *buf;
    Py_ssize_t len, cap;
} Out;

static int out_reserve(Out *o, Py_ssize_t more) {
    if (o->len + more <= o->cap) return 0;
    Py_ssize_t cap = o->cap ? o->cap : 256;
    while (cap < o->len + more) cap *= 2;
    char *buf = PyMem_Realloc(o->buf, (size_t)cap);
    if (buf == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    o->buf = buf;
    o->cap = cap;
    return 0;
}

static int out_write(Out *o, const void *data, Py_ssize_t len) {
    if (out_reserve(o, len) < 0) return -1;
    if (len) memcpy(o->buf + o->len, data, (size_t)len);
    o->len += len;
    return 0;
}

static int out_byte_be(Out *o, uint8_t tag, uint64_t value, int width) {
    uint8_t b[9];
    b[0] = tag;
    for (int i = 0; i < width; i++) b[1 + i] = (uint8_t)(value >> (8 * (width - 1 - i)));
    return out_write(o, b, 1 + width);
}

/* msgpack's smallest encoding of an integer, as msgspec writes it. */
static int mp_int(Out *o, long long v) {
    if (v >= 0) {
        uint64_t u = (uint64_t)v;
        if (u <= 0x7f) return out_byte_be(o, (uint8_t)u, 0, 0);
        if (u <= 0xff) return out_byte_be(o, 0xcc, u, 1);
        if (u <= 0xffff) return out_byte_be(o, 0xcd, u, 2);
        if (u <= 0xffffffffULL) return out_byte_be(o, 0xce, u, 4);
        return out_byte_be(o, 0xcf, u, 8);
    }
    if (v >= -32) return out_byte_be(o, (uint8_t)(int8_t)v, 0, 0);
    if (v >= -128) return out_byte_be(o, 0xd0, (uint64_t)v, 1);
    if (v >= -32768) return out_byte_be(o, 0xd1, (uint64_t)v, 2);
    if (v >= -2147483648LL) return out_byte_be(o, 0xd2, (uint64_t)v, 4);
    return out_byte_be(o, 0xd3, (uint64_t)v, 8);
}

static int mp_float(Out *o, double d) {
    uint64_t bits;
    memcpy(&bits, &d, 8);
    return out_byte_be(o, 0xcb, bits, 8);
}

static int mp_str(Out *o, PyObject *text) {
    if (!PyUnicode_Check(text)) {
        PyErr_Format(PyExc_TypeError, "expected a str, got %.100s", Py_TYPE(text)->tp_name);
        return -1;
    }
    Py_ssize_t size;
    const char *utf8 = PyUnicode_AsUTF8AndSize(text, &size);
    if (utf8 == NULL) return -1;
    int rc;
    if (size < 32)
        rc = out_byte_be(o, (uint8_t)(0xa0 | size), 0, 0);
    else if (size <= 0xff)
        rc = out_byte_be(o, 0xd9, (uint64_t)size, 1);
    else if (size <= 0xffff)
        rc = out_byte_be(o, 0xda, (uint64_t)size, 2);
    else
        rc = out_byte_be(o, 0xdb, (uint64_t)size, 4);
    return rc < 0 ? -1 : out_write(o, utf8, size);
}

static int mp_array_header(Out *o, Py_ssize_t n) {
    if (n < 16) return out_byte_be(o, (uint8_t)(0x90 | n), 0, 0);
    if (n <= 0xffff) return out_byte_be(o, 0xdc, (uint64_t)n, 2);
    return out_byte_be(o, 0xdd, (uint64_t)n, 4);
}

static int attr_int(PyObject *obj, PyObject *name, long long *out) {
    PyObject *v = get_attr(obj, name);
    if (v == NULL) return -1;
    *out = PyLong_AsLongLong(v);
    Py_DECREF(v);
    return (*out == -1 && PyErr_Occurred()) ? -1 : 0;
}

static int attr_str(Out *o, PyObject *obj, PyObject *name) {
    PyObject *v = get_attr(obj, name);
    if (v == NULL) return -1;
    int rc = mp_str(o, v);
    Py_DECREF(v);
    return rc;
}

/* A block's first `used` columns, row after row (ndarray.tobytes of block[:, :used]), written at
 * *at; the block must be C-contiguous 8-byte rows. 1: written; 0: an unexpected layout; -1: error. */
static int write_block(char **at, PyObject *array, Py_ssize_t rows, Py_ssize_t used) {
    int64_t *data;
    Py_ssize_t n_rows, cols;
    if (nd_int64_2d(array, 0, &data, &n_rows, &cols)) {
        if (n_rows != rows || cols < used) return 0;
        for (Py_ssize_t r = 0; r < rows && used; r++) {
            memcpy(*at, data + r * cols, (size_t)used * 8);
            *at += used * 8;
        }
        return 1;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(array, &view, PyBUF_STRIDES) < 0) return -1;
    int ok = view.itemsize == 8 && view.ndim == 2 && view.shape[0] == rows && view.shape[1] >= used &&
             (rows == 0 || view.shape[1] == 0 || (view.strides[1] == 8 && view.strides[0] == 8 * view.shape[1]));
    if (ok && used) {
        const char *base = view.buf;
        for (Py_ssize_t r = 0; r < rows; r++) {
            memcpy(*at, base + r * view.strides[0], (size_t)used * 8);
            *at += used * 8;
        }
    }
    PyBuffer_Release(&view);
    return ok ? 1 : 0;
}

static PyObject *encode(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "encode(graph, cache, cache_key)");
        return NULL;
    }
    PyObject *graph = args[0], *cache = args[1], *cache_key = args[2];
    PyObject *result = NULL, *ids = NULL, *nodes = NULL, *edges = NULL, *ring = NULL;
    Py_buffer ids_view = {.obj = NULL}, ring_view = {.obj = NULL}, cache_view = {.obj = NULL};
    Out head = {0};
    long long version, last_slot, n, ne, ring_pos;
    int rc;

    if (PyObject_GetBuffer(cache, &cache_view, PyBUF_SIMPLE) < 0) goto done;
    ids = get_attr(graph, s_ids_memo);
    if (ids == NULL) goto done;
    if (ids == Py_None) { /* the ids changed since the graph was last encoded */
        PyObject *item_ids = get_attr(graph, s_item_ids);
        if (item_ids == NULL) goto done;
        if (!PyList_Check(item_ids)) {
            Py_DECREF(item_ids);
            result = Py_NewRef(Py_None);
            goto done;
        }
        Out enc = {0};
        Py_ssize_t count = PyList_GET_SIZE(item_ids);
        rc = mp_array_header(&enc, count);
        for (Py_ssize_t i = 0; i < count && rc == 0; i++) rc = mp_str(&enc, PyList_GET_ITEM(item_ids, i));
        Py_DECREF(item_ids);
        /* A bytearray: apply keeps it up to date in place (memo_update) instead of dropping it. */
        Py_SETREF(ids, rc == 0 ? PyByteArray_FromStringAndSize(enc.buf ? enc.buf : "", enc.len) : NULL);
        PyMem_Free(enc.buf);
        if (ids == NULL || set_attr(graph, s_ids_memo, ids) < 0) goto done;
    }
    if (PyObject_GetBuffer(ids, &ids_view, PyBUF_SIMPLE) < 0) goto done;
    if (attr_int(graph, s_state_version, &version) < 0 || attr_int(graph, s_last_slot, &last_slot) < 0 ||
        attr_int(graph, s__n, &n) < 0 || attr_int(graph, s__ne, &ne) < 0 || attr_int(graph, s_ring_pos, &ring_pos) < 0)
        goto done;
    double last_ts = attr_double(graph, s_last_ts);
    if (last_ts == -1.0 && PyErr_Occurred()) goto done;
    ring = get_attr(graph, s_ring);
    if (ring == NULL || PyObject_GetBuffer(ring, &ring_view, PyBUF_FORMAT) < 0) goto done;
    if (ring_view.itemsize != 8) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    /* The header: _HeaderOut, an array of 10. */
    if (mp_array_header(&head, 10) < 0 || mp_int(&head, version) < 0 || mp_int(&head, last_slot) < 0 ||
        mp_float(&head, last_ts) < 0 || attr_str(&head, graph, s_last_event_id) < 0 ||
        out_write(&head, ids_view.buf, ids_view.len) < 0 || mp_int(&head, ne) < 0 ||
        mp_int(&head, ring_view.len / 8) < 0 || mp_int(&head, ring_pos) < 0 || mp_str(&head, cache_key) < 0 ||
        mp_int(&head, cache_view.len) < 0)
        goto done;
    /* The record: version, header length, header, node block, edge block, ring, cache — written
     * into the bytes object itself (one allocation, no second copy). */
    nodes = get_attr(graph, s__nodes);
    edges = nodes ? get_attr(graph, s__edges) : NULL;
    if (edges == NULL) goto done;
    Py_ssize_t size = 5 + head.len + (N_NODE_ROWS * (Py_ssize_t)n + 3 * (Py_ssize_t)ne) * 8 + ring_view.len +
                      cache_view.len;
    PyObject *record = PyBytes_FromStringAndSize(NULL, size);
    if (record == NULL) goto done;
    char *at = PyBytes_AS_STRING(record);
    uint8_t lead[5] = {2, (uint8_t)head.len, (uint8_t)(head.len >> 8), (uint8_t)(head.len >> 16),
                       (uint8_t)(head.len >> 24)};
    memcpy(at, lead, 5);
    memcpy(at + 5, head.buf, (size_t)head.len);
    at += 5 + head.len;
    rc = write_block(&at, nodes, N_NODE_ROWS, (Py_ssize_t)n);
    if (rc == 1) rc = write_block(&at, edges, 3, (Py_ssize_t)ne);
    if (rc != 1) {
        Py_DECREF(record);
        if (rc == 0) result = Py_NewRef(Py_None);
        goto done;
    }
    if (ring_view.len) memcpy(at, ring_view.buf, (size_t)ring_view.len);
    at += ring_view.len;
    if (cache_view.len) memcpy(at, cache_view.buf, (size_t)cache_view.len);
    result = record;

done:
    if (ids_view.obj) PyBuffer_Release(&ids_view);
    if (ring_view.obj) PyBuffer_Release(&ring_view);
    if (cache_view.obj) PyBuffer_Release(&cache_view);
    PyMem_Free(head.buf);
    Py_XDECREF(ids);
    Py_XDECREF(nodes);
    Py_XDECREF(edges);
    Py_XDECREF(ring);
    return result;
}


/* ---- gather: many graphs' blocks as one batch (graph_state.user_graph.gather) ---------------- */

/* A block to read: its data and row stride in elements; 1, 0 (other layout) or -1 (release it with
 * block_release). */
static int block_view(PyObject *array, Py_ssize_t rows, Py_ssize_t used, Block *b) {
    Py_ssize_t n_rows;
    b->held = 0;
    if (nd_int64_2d(array, 0, &b->data, &n_rows, &b->capacity)) return n_rows == rows && b->capacity >= used;
    if (PyObject_GetBuffer(array, &b->view, PyBUF_STRIDES) < 0) return -1;
    b->held = 1;
    Py_buffer *view = &b->view;
    int ok = view->itemsize == 8 && view->ndim == 2 && view->shape[0] == rows && view->shape[1] >= used &&
             (view->shape[1] == 0 || (view->strides[1] == 8 && view->strides[0] == 8 * view->shape[1]));
    if (!ok) {
        block_release(b);
        return 0;
    }
    b->data = view->buf;
    b->capacity = view->shape[1];
    return 1;
}

/* How the lookup rows an item `known` lacks, when it hashes it (operators.item_index.ItemIndex.row:
 * base + BLAKE2b-64(UTF-8) % buckets, remembered in `known` while it holds at most `limit` items);
 * on = 0: the lookup is called. */
typedef struct {
    long long base, buckets;
    Py_ssize_t limit;
    int on;
} Hashed;

/* An item's row (a new reference): from `known`, else hashed here, else `lookup(item)`. */
static PyObject *row_of(PyObject *item, PyObject *known, PyObject *lookup, const Hashed *hashed) {
    PyObject *row = PyDict_GetItemWithError(known, item); /* borrowed */
    if (row != NULL) return Py_NewRef(row);
    if (PyErr_Occurred()) return NULL;
    if (hashed->on && PyUnicode_CheckExact(item) && PyDict_GET_SIZE(known) <= hashed->limit) {
        Py_ssize_t size;
        const char *utf8 = PyUnicode_AsUTF8AndSize(item, &size);
        if (utf8 == NULL) {
            PyErr_Clear(); /* not UTF-8 (a lone surrogate): the lookup says what it says */
            return PyObject_CallOneArg(lookup, item);
        }
        uint64_t h = (uint64_t)blake2b_64((const uint8_t *)utf8, size);
        row = PyLong_FromLongLong(hashed->base + (long long)(h % (uint64_t)hashed->buckets));
        if (row != NULL && PyDict_SetItem(known, item, row) < 0) Py_CLEAR(row);
        return row;
    }
    return PyObject_CallOneArg(lookup, item);
}

static PyObject *ARRAY_TYPE = NULL; /* array.array */

/* UserGraph.slot_rows for a graph whose rows memo is another owner's (or none): every slot's row, in
 * slot order, as the graph's new memo for `owner`. 1: done; 0: not the expected types (the caller
 * calls slot_rows); -1: error. */
static int fresh_rows(PyObject *g, PyObject *owner, PyObject *known, PyObject *lookup, const Hashed *hashed) {
    if (ARRAY_TYPE == NULL) {
        PyObject *mod = PyImport_ImportModule("array");
        ARRAY_TYPE = mod ? PyObject_GetAttrString(mod, "array") : NULL;
        Py_XDECREF(mod);
        if (ARRAY_TYPE == NULL) return -1;
    }
    PyObject *items = get_attr(g, s_item_ids);
    if (items == NULL) return -1;
    if (!PyList_CheckExact(items)) {
        Py_DECREF(items);
        return 0;
    }
    Py_ssize_t n = PyList_GET_SIZE(items);
    PyObject *raw = PyBytes_FromStringAndSize(NULL, n * 8), *memo = NULL, *stale = NULL;
    int rc = raw ? 0 : -1;
    for (Py_ssize_t i = 0; i < n && rc == 0 && i < PyList_GET_SIZE(items); i++) {
        PyObject *row = row_of(PyList_GET_ITEM(items, i), known, lookup, hashed);
        long long value = row ? PyLong_AsLongLong(row) : -1;
        Py_XDECREF(row);
        if (row == NULL || (value == -1 && PyErr_Occurred())) rc = -1;
        else ((int64_t *)PyBytes_AS_STRING(raw))[i] = value;
    }
    if (rc == 0 && PyList_GET_SIZE(items) != n) { /* a lookup changed the graph's items: slot_rows decides */
        rc = 0;
        goto out;
    }
    if (rc == 0) {
        memo = PyObject_CallFunction(ARRAY_TYPE, "sO", "q", raw);
        stale = memo ? PyList_New(0) : NULL;
        rc = stale && set_attr(g, s__rows, memo) == 0 && set_attr(g, s__rows_owner, owner) == 0 &&
                     set_attr(g, s__stale_rows, stale) == 0
                 ? 1
                 : -1;
    }
out:
    Py_XDECREF(raw);
    Py_XDECREF(memo);
    Py_XDECREF(stale);
    Py_DECREF(items);
    return rc;
}

/* UserGraph.slot_rows' refresh of stale slots, in C: each stale slot's row from `known` (a dict
 * item id -> row, the lookup's own memo) or else `lookup(item)`, written into the `_rows` array;
 * then the stale list emptied. 1: done; 0: not the expected types (the caller calls slot_rows);
 * -1: error. */
static int refresh_stale(PyObject *g, PyObject *stale, PyObject *known, PyObject *lookup, const Hashed *hashed) {
    PyObject *memo = get_attr(g, s__rows);
    PyObject *items = memo ? get_attr(g, s_item_ids) : NULL;
    if (items == NULL) {
        Py_XDECREF(memo);
        return -1;
    }
    int rc = 0;
    Py_buffer rv;
    if (!PyList_CheckExact(items) || PyObject_GetBuffer(memo, &rv, PyBUF_WRITABLE | PyBUF_FORMAT) < 0) {
        PyErr_Clear();
        goto out;
    }
    if (rv.itemsize != 8 || rv.format == NULL || strcmp(rv.format, "q") != 0) goto release;
    Py_ssize_t n_rows = rv.len / 8, n_items = PyList_GET_SIZE(items);
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(stale); i++) {
        PyObject *slot_obj = PyList_GET_ITEM(stale, i);
        Py_ssize_t slot = PyLong_AsSsize_t(slot_obj);
        if (slot == -1 && PyErr_Occurred()) {
            rc = -1;
            goto release;
        }
        if (slot < 0 || slot >= n_rows || slot >= n_items) {
            PyErr_SetString(PyExc_IndexError, "a stale row slot is outside the graph");
            rc = -1;
            goto release;
        }
        PyObject *row = row_of(PyList_GET_ITEM(items, slot), known, lookup, hashed);
        if (row == NULL) {
            rc = -1;
            goto release;
        }
        long long value = PyLong_AsLongLong(row);
        Py_DECREF(row);
        if (value == -1 && PyErr_Occurred()) {
            rc = -1;
            goto release;
        }
        ((int64_t *)rv.buf)[slot] = value;
    }
    rc = PyList_SetSlice(stale, 0, PyList_GET_SIZE(stale), NULL) < 0 ? -1 : 1;
release:
    PyBuffer_Release(&rv);
out:
    Py_DECREF(memo);
    Py_DECREF(items);
    return rc;
}

static PyObject *gather(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 3 || nargs > 5 || !PyList_CheckExact(args[0]) ||
        (nargs >= 4 && args[3] != Py_None && !PyDict_CheckExact(args[3]))) {
        PyErr_SetString(PyExc_TypeError,
                        "gather(graphs: list, owner, lookup, known: dict | None = None, hashed: tuple | None = None)");
        return NULL;
    }
    PyObject *graphs = args[0], *owner = args[1], *lookup = args[2];
    PyObject *known = nargs >= 4 && args[3] != Py_None ? args[3] : NULL;
    Hashed hashed = {.on = 0};
    if (nargs == 5 && args[4] != Py_None) {
        if (!PyArg_ParseTuple(args[4], "LLn", &hashed.base, &hashed.buckets, &hashed.limit)) return NULL;
        if (hashed.buckets < 1) {
            PyErr_SetString(PyExc_ValueError, "hashed rows need at least one bucket");
            return NULL;
        }
        hashed.on = 1;
    }
    Py_ssize_t b = PyList_GET_SIZE(graphs), total_n = 0, total_e = 0;
    PyObject *out[7] = {NULL}; /* nodes, edges, sizes, n_edges, versions, last, rows */
    PyObject *result = NULL;
    int64_t *sizes = NULL, *n_edges = NULL;
    sizes = PyMem_Malloc(sizeof(int64_t) * (b ? b : 1));
    n_edges = PyMem_Malloc(sizeof(int64_t) * (b ? b : 1));
    if (sizes == NULL || n_edges == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < b; i++) {
        PyObject *g = PyList_GET_ITEM(graphs, i);
        Py_ssize_t n = attr_ssize(g, s__n), ne = attr_ssize(g, s__ne);
        if ((n == -1 || ne == -1) && PyErr_Occurred()) goto done;
        sizes[i] = n;
        n_edges[i] = ne;
        total_n += n;
        total_e += ne;
    }
    Py_ssize_t lens[7] = {N_NODE_ROWS * total_n, 3 * total_e, b, b, b, b, total_n};
    for (int j = 0; j < 7; j++) {
        out[j] = PyByteArray_FromStringAndSize(NULL, lens[j] * 8);
        if (out[j] == NULL) goto done;
    }
    int64_t *nodes = (int64_t *)PyByteArray_AS_STRING(out[0]), *edges = (int64_t *)PyByteArray_AS_STRING(out[1]);
    int64_t *versions = (int64_t *)PyByteArray_AS_STRING(out[4]), *last = (int64_t *)PyByteArray_AS_STRING(out[5]);
    int64_t *rows = (int64_t *)PyByteArray_AS_STRING(out[6]);
    if (b) {
        memcpy(PyByteArray_AS_STRING(out[2]), sizes, (size_t)b * 8);
        memcpy(PyByteArray_AS_STRING(out[3]), n_edges, (size_t)b * 8);
    }
    Py_ssize_t at_n = 0, at_e = 0;
    for (Py_ssize_t i = 0; i < b; i++) {
        PyObject *g = PyList_GET_ITEM(graphs, i);
        Py_ssize_t n = sizes[i], ne = n_edges[i];
        long long version, last_slot;
        if (attr_int(g, s_state_version, &version) < 0 || attr_int(g, s_last_slot, &last_slot) < 0) goto done;
        versions[i] = version;
        last[i] = last_slot;
        PyObject *nb = get_attr(g, s__nodes);
        PyObject *eb = nb ? get_attr(g, s__edges) : NULL;
        if (eb == NULL) {
            Py_XDECREF(nb);
            goto done;
        }
        Block nv = {.held = 0}, ev = {.held = 0};
        int rc = block_view(nb, N_NODE_ROWS, n, &nv);
        if (rc == 1) {
            rc = block_view(eb, 3, ne, &ev);
            if (rc != 1) block_release(&nv);
        }
        if (rc != 1) {
            Py_DECREF(nb);
            Py_DECREF(eb);
            if (rc == 0) result = Py_NewRef(Py_None); /* a block of another layout: the Python path */
            goto done;
        }
        const int64_t *src_n = nv.data, *src_e = ev.data;
        Py_ssize_t ns = nv.capacity, es = ev.capacity;
        for (int r = 0; r < N_NODE_ROWS; r++)
            if (n) memcpy(nodes + r * total_n + at_n, src_n + r * ns, (size_t)n * 8);
        for (Py_ssize_t j = 0; j < ne; j++) {
            edges[at_e + j] = src_e[j] + at_n;
            edges[total_e + at_e + j] = src_e[es + j] + at_n;
            edges[2 * total_e + at_e + j] = src_e[2 * es + j]; /* the weight's bits */
        }
        block_release(&nv);
        block_release(&ev);
        Py_DECREF(nb); /* held until here: a block read without the buffer protocol holds no reference */
        Py_DECREF(eb);
        /* The item rows: the graph's memo when it is current for `owner` (UserGraph.slot_rows'
         * common case, read here without the call), else what slot_rows refreshes. */
        PyObject *memo = NULL, *memo_owner = get_attr(g, s__rows_owner);
        PyObject *stale = memo_owner ? get_attr(g, s__stale_rows) : NULL;
        if (stale == NULL) {
            Py_XDECREF(memo_owner);
            goto done;
        }
        int fresh = memo_owner == owner && PyList_CheckExact(stale) && PyList_GET_SIZE(stale) == 0;
        if (!fresh && known != NULL && (memo_owner != owner || PyList_CheckExact(stale))) {
            /* a new graph or another owner's memo: made anew; else its stale slots refreshed */
            fresh = memo_owner != owner ? fresh_rows(g, owner, known, lookup, &hashed)
                                        : refresh_stale(g, stale, known, lookup, &hashed);
            if (fresh < 0) {
                Py_DECREF(memo_owner);
                Py_DECREF(stale);
                goto done;
            }
        }
        if (fresh)
            memo = get_attr(g, s__rows);
        else
            memo = PyObject_CallMethod(g, "slot_rows", "OO", owner, lookup);
        Py_DECREF(memo_owner);
        Py_DECREF(stale);
        if (memo == NULL) goto done;
        Py_buffer rv;
        rc = PyObject_GetBuffer(memo, &rv, PyBUF_SIMPLE);
        Py_DECREF(memo);
        if (rc < 0) goto done;
        if (rv.len != n * 8) {
            PyBuffer_Release(&rv);
            PyErr_SetString(PyExc_ValueError, "slot_rows returned another length than the graph's nodes");
            goto done;
        }
        if (n) memcpy(rows + at_n, rv.buf, (size_t)n * 8);
        PyBuffer_Release(&rv);
        at_n += n;
        at_e += ne;
    }
    result = PyTuple_New(7);
    if (result != NULL)
        for (int j = 0; j < 7; j++) {
            PyTuple_SET_ITEM(result, j, out[j]);
            out[j] = NULL;
        }

done:
    for (int j = 0; j < 7; j++) Py_XDECREF(out[j]);
    PyMem_Free(sizes);
    PyMem_Free(n_edges);
    return result;
}


/* ---- rows of many per-graph arrays (graph_state.rows: the incremental engine's layer caches) ---- */

/* An int64 vector from any buffer; -1 with an exception when it is not one. */
static int int64_view(PyObject *obj, Py_buffer *view, const char *what) {
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS) < 0) return -1;
    if (view->len % 8) {
        PyBuffer_Release(view);
        PyErr_Format(PyExc_ValueError, "%s must be int64", what);
        return -1;
    }
    return 0;
}

/* take (values == NULL: copy rows out into a new bytearray) or put (copy `values` in). */
static PyObject *rows_op(PyObject *const *args, Py_ssize_t nargs, int put) {
    if (nargs != (put ? 6 : 5) || !PyList_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError, put ? "put_rows(arrays: list, lo, hi, at, slots, values)"
                                             : "take_rows(arrays: list, lo, hi, at, slots)");
        return NULL;
    }
    PyObject *arrays = args[0];
    Py_ssize_t lo = PyLong_AsSsize_t(args[1]), hi = PyLong_AsSsize_t(args[2]);
    if ((lo == -1 || hi == -1) && PyErr_Occurred()) return NULL;
    Py_ssize_t g_count = PyList_GET_SIZE(arrays);
    Py_buffer at_v, slot_v, val_v = {.obj = NULL};
    if (int64_view(args[3], &at_v, "at") < 0) return NULL;
    if (int64_view(args[4], &slot_v, "slots") < 0) {
        PyBuffer_Release(&at_v);
        return NULL;
    }
    PyObject *result = NULL, *out = NULL;
    const int64_t *at = at_v.buf, *slots = slot_v.buf;
    Py_ssize_t k_total = slot_v.len / 8, layers = hi - lo, dim = -1;
    char *dst = NULL;
    if (at_v.len / 8 != g_count + 1 || at[0] != 0 || at[g_count] != k_total || layers < 0) {
        PyErr_SetString(PyExc_ValueError, "`at` must hold len(arrays) + 1 offsets from 0 to len(slots), and lo <= hi");
        goto done;
    }
    if (put && PyObject_GetBuffer(args[5], &val_v, PyBUF_C_CONTIGUOUS) < 0) goto done;
    for (Py_ssize_t g = 0; g < g_count; g++) {
        Py_buffer a;
        if (PyObject_GetBuffer(PyList_GET_ITEM(arrays, g), &a, put ? PyBUF_STRIDES | PyBUF_WRITABLE : PyBUF_STRIDES) < 0)
            goto done;
        int ok = a.itemsize == 4 && a.ndim == 3 && a.shape[0] >= hi && PyBuffer_IsContiguous(&a, 'C');
        if (ok && dim < 0) {
            dim = a.shape[2];
            Py_ssize_t size = layers * k_total * dim * 4;
            if (put && val_v.len != size) {
                PyBuffer_Release(&a);
                PyErr_SetString(PyExc_ValueError, "values must be [hi - lo, len(slots), d] float32");
                goto done;
            }
            if (!put) {
                out = PyByteArray_FromStringAndSize(NULL, size);
                if (out == NULL) {
                    PyBuffer_Release(&a);
                    goto done;
                }
                dst = PyByteArray_AS_STRING(out);
            }
        }
        if (!ok || a.shape[2] != dim) {
            PyBuffer_Release(&a);
            PyErr_SetString(PyExc_ValueError, "every array must be C-contiguous float32 [layers, nodes, d] of one d");
            goto done;
        }
        Py_ssize_t n = a.shape[1], row = dim * 4;
        char *base = a.buf;
        for (Py_ssize_t k = at[g]; k < at[g + 1]; k++) {
            if (slots[k] < 0 || slots[k] >= n) {
                PyBuffer_Release(&a);
                PyErr_SetString(PyExc_IndexError, "a slot is outside its array's nodes");
                goto done;
            }
            for (Py_ssize_t l = 0; l < layers; l++) {
                char *cell = base + ((lo + l) * n + slots[k]) * row;
                char *flat = (put ? (char *)val_v.buf : dst) + (l * k_total + k) * row;
                if (put)
                    memcpy(cell, flat, (size_t)row);
                else
                    memcpy(flat, cell, (size_t)row);
            }
        }
        PyBuffer_Release(&a);
    }
    if (put)
        result = Py_NewRef(Py_None);
    else {
        if (out == NULL) out = PyByteArray_FromStringAndSize(NULL, 0); /* no arrays: no rows */
        result = out;
        out = NULL;
    }

done:
    Py_XDECREF(out);
    PyBuffer_Release(&at_v);
    PyBuffer_Release(&slot_v);
    if (val_v.obj) PyBuffer_Release(&val_v);
    return result;
}

static PyObject *take_rows(PyObject *self, PyObject *const *args, Py_ssize_t nargs) { return rows_op(args, nargs, 0); }
static PyObject *put_rows(PyObject *self, PyObject *const *args, Py_ssize_t nargs) { return rows_op(args, nargs, 1); }

/* ---- footprint: UserGraph.py_footprint's bytes (what the graph cache budgets by) --------------- */

static Py_ssize_t FP_GRAPH = -1, FP_ITEM, FP_RING_ENTRY, FP_RING_KEY, FP_EDGE_LOOKUP, FP_VIEWS;

/* An int64 block's bytes (ndarray.nbytes), or -1 when it is not one this reads. */
static Py_ssize_t nd_int64_nbytes(PyObject *a) {
    if (ND_TYPE == NULL || !Py_IS_TYPE(a, ND_TYPE)) return -1;
    NdFields *f = (NdFields *)a;
    if (f->descr != ND_INT64 || f->nd != 2) return -1;
    return f->dimensions[0] * f->dimensions[1] * 8;
}

/* user_graph._held: the blocks' own bytes, or all of the record (bytes) they view; -1: not known here. */
static Py_ssize_t held(PyObject *nodes, PyObject *edges) {
    Py_ssize_t n_bytes = nd_int64_nbytes(nodes), e_bytes = nd_int64_nbytes(edges);
    if (n_bytes < 0 || e_bytes < 0) return -1;
    if (((NdFields *)nodes)->base == NULL && ((NdFields *)edges)->base == NULL) return n_bytes + e_bytes;
    Py_ssize_t total = 0;
    PyObject *seen = NULL, *blocks[2] = {nodes, edges};
    Py_ssize_t sizes[2] = {n_bytes, e_bytes};
    for (int k = 0; k < 2; k++) {
        PyObject *base = blocks[k];
        while (PyObject_TypeCheck(base, ND_TYPE) && ((NdFields *)base)->base != NULL) base = ((NdFields *)base)->base;
        if (!PyBytes_Check(base)) {
            total += sizes[k];
        } else if (base != seen) {
            total += PyBytes_GET_SIZE(base);
            seen = base;
        }
    }
    return total;
}

static Py_ssize_t size_of(PyObject *obj, PyObject *name) {
    PyObject *v = get_attr(obj, name);
    if (v == NULL) return -1;
    Py_ssize_t r = v == Py_None ? 0 : PyObject_Size(v);
    Py_DECREF(v);
    return r;
}

static int is_set(PyObject *obj, PyObject *name) {
    PyObject *v = get_attr(obj, name);
    if (v == NULL) return -1;
    int r = v != Py_None;
    Py_DECREF(v);
    return r;
}

static PyObject *footprint(PyObject *self, PyObject *graph) {
    if (FP_GRAPH < 0) Py_RETURN_NONE;
    PyObject *nodes = get_attr(graph, s__nodes), *edges = nodes ? get_attr(graph, s__edges) : NULL;
    PyObject *cache = edges ? get_attr(graph, s__cache_array) : NULL;
    PyObject *result = NULL;
    if (cache == NULL) goto done;
    Py_ssize_t blocks = held(nodes, edges);
    if (blocks < 0) {
        result = Py_NewRef(Py_None); /* blocks of another kind: the Python path */
        goto done;
    }
    Py_ssize_t cache_bytes;
    if (cache != Py_None) {
        PyObject *nb = get_attr(cache, s_nbytes);
        cache_bytes = nb ? PyLong_AsSsize_t(nb) : -1;
        Py_XDECREF(nb);
    } else {
        cache_bytes = size_of(graph, s__cache_bytes);
    }
    Py_ssize_t lookup = cache_bytes < 0 ? -1 : size_of(graph, s__edge_at);
    Py_ssize_t ring = lookup < 0 ? -1 : size_of(graph, s_ring);
    int ring_set = ring < 0 ? -1 : is_set(graph, s__ring_set);
    int node_views = ring_set < 0 ? -1 : is_set(graph, s__node_views);
    int edge_views = node_views < 0 ? -1 : is_set(graph, s__edge_views);
    Py_ssize_t n = edge_views < 0 ? -1 : attr_ssize(graph, s__n);
    if (n < 0 && PyErr_Occurred()) goto done;
    result = PyLong_FromSsize_t(FP_GRAPH + blocks + cache_bytes + FP_EDGE_LOOKUP * lookup + FP_ITEM * n +
                                (FP_RING_ENTRY + (ring_set ? FP_RING_KEY : 0)) * ring + FP_VIEWS * (node_views + edge_views));
done:
    Py_XDECREF(nodes);
    Py_XDECREF(edges);
    Py_XDECREF(cache);
    return result;
}

static PyObject *setup(PyObject *self, PyObject *args) {
    PyObject *change_type, *applied_type, *delta_type;
    Py_ssize_t tail_limit, fp[6];
    if (!PyArg_ParseTuple(args, "OnO(nnnnnn)O", &change_type, &tail_limit, &applied_type, &fp[0], &fp[1], &fp[2],
                          &fp[3], &fp[4], &fp[5], &delta_type))
        return NULL;
    /* make_delta() fills the tuple by position too. */
    PyObject *delta_fields = PyObject_GetAttrString(delta_type, "_fields");
    PyObject *delta_expected = Py_BuildValue("(ss)", "base_version", "slots");
    int delta_same = delta_fields && delta_expected ? PyObject_RichCompareBool(delta_fields, delta_expected, Py_EQ) : -1;
    Py_XDECREF(delta_fields);
    Py_XDECREF(delta_expected);
    if (delta_same <= 0 || !PyType_Check(delta_type) || !PyType_IsSubtype((PyTypeObject *)delta_type, &PyTuple_Type)) {
        if (delta_same >= 0) PyErr_SetString(PyExc_TypeError, "setup() needs UserDelta(base_version, slots)");
        return NULL;
    }
    PyObject *empty = PyTuple_New(0);
    PyObject *kwargs = empty ? Py_BuildValue("{s:O}", "duplicate", Py_True) : NULL;
    PyObject *dup = kwargs ? PyObject_Call(change_type, empty, kwargs) : NULL;
    Py_XDECREF(empty);
    Py_XDECREF(kwargs);
    if (dup == NULL) return NULL;
    /* make_change() fills the tuple by position: the fields must be these, in this order. */
    PyObject *fields = PyObject_GetAttrString(change_type, "_fields");
    PyObject *expected = Py_BuildValue("(sssss)", "nodes", "edges", "evicted", "duplicate", "late_by");
    int same = fields && expected ? PyObject_RichCompareBool(fields, expected, Py_EQ) : -1;
    Py_XDECREF(fields);
    Py_XDECREF(expected);
    if (same <= 0 || !PyType_Check(change_type) || !PyType_IsSubtype((PyTypeObject *)change_type, &PyTuple_Type)) {
        Py_DECREF(dup);
        if (same >= 0) PyErr_SetString(PyExc_TypeError, "setup() needs GraphChange(nodes, edges, evicted, duplicate, late_by)");
        return NULL;
    }
    Py_XSETREF(GraphChange, Py_NewRef(change_type));
    Py_XSETREF(AppliedEvents, Py_NewRef(applied_type));
    Py_XSETREF(UserDelta, Py_NewRef(delta_type));
    Py_XSETREF(DUPLICATE, dup);
    TAIL_LIMIT = tail_limit;
    nd_check();
    FP_GRAPH = fp[0], FP_ITEM = fp[1], FP_RING_ENTRY = fp[2], FP_RING_KEY = fp[3], FP_EDGE_LOOKUP = fp[4], FP_VIEWS = fp[5];
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"apply", (PyCFunction)(void (*)(void))apply, METH_FASTCALL,
     "apply(graph, event, replay) -> GraphChange | None: UserGraph._apply in C; None: take the Python path."},
    {"apply_events", (PyCFunction)(void (*)(void))apply_events, METH_FASTCALL,
     "apply_events(pairs, graphs, factory, known, publish, applied, restore, changed, earliest) -> "
     "AppliedEvents: user_graph.py_apply_events in C."},
    {"gather", (PyCFunction)(void (*)(void))gather, METH_FASTCALL,
     "gather(graphs, owner, lookup, known=None, hashed=None) -> 7 bytearrays | None: user_graph.gather's columns; "
     "None: take the Python path."},
    {"take_rows", (PyCFunction)(void (*)(void))take_rows, METH_FASTCALL,
     "take_rows(arrays, lo, hi, at, slots) -> bytearray: graph_state.rows.take_rows' float32 rows."},
    {"put_rows", (PyCFunction)(void (*)(void))put_rows, METH_FASTCALL,
     "put_rows(arrays, lo, hi, at, slots, values): graph_state.rows.put_rows in C."},
    {"event_key", event_key, METH_O, "event_key(event_id) -> int: the signed 64-bit BLAKE2b-64 digest."},
    {"encode", (PyCFunction)(void (*)(void))encode, METH_FASTCALL,
     "encode(graph, cache, cache_key) -> bytes | None: codec.encode's version-2 record; None: take the Python path."},
    {"footprint", footprint, METH_O, "footprint(graph) -> int | None: UserGraph.py_footprint; None: take the Python path."},
    {"setup", setup, METH_VARARGS,
     "setup(GraphChange, TAIL_LIMIT, AppliedEvents, footprint's six byte counts, UserDelta): the types and constants used here."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "graph_state._native", NULL, -1, methods};

PyMODINIT_FUNC PyInit__native(void) {
#if PY_BIG_ENDIAN
    /* Records and blocks are little-endian: a big-endian host takes the Python path, which swaps. */
    PyErr_SetString(PyExc_ImportError, "graph_state._native supports little-endian hosts only");
    return NULL;
#endif
#define INTERN(name)                                     \
    s_##name = PyUnicode_InternFromString(#name);        \
    if (s_##name == NULL) return NULL;
    NAMES(INTERN)
#undef INTERN
    EMPTY_FROZEN = PyFrozenSet_New(NULL);
    if (EMPTY_FROZEN == NULL) return NULL;
    ZERO_FLOAT = PyFloat_FromDouble(0.0);
    if (ZERO_FLOAT == NULL) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddIntConstant(m, "API", NATIVE_API) < 0) Py_CLEAR(m);
    return m;
}
