/* The fan-out's inner loop, compiled: for one packet, every player of a track in one call.
 *
 * Python (trio_sfu/media/fanout.py, consumer.py, rewriter.py) owns every decision; this file only
 * repeats the steady case of `Consumer.forward` (a player past its first keyframe, not muted, not
 * switching layers, packets in order, its own connected UDP socket; for simulcast VP8 also no
 * temporal cap and its picture numbering in sync) without the interpreter: number the packet, write
 * the player's header fields (and VP8 picture id and TL0PICIDX), protect with libsrtp, send (in
 * batches of players, one sendmmsg each, through the shared socket where the server gave one). Any
 * other case, for any player, is handed to that player's `forward` in Python, in list order, so both
 * paths share one state and give byte-identical output (tests/media/test_fastpath.py checks that).
 *
 * The state lives here so that both paths read it at C speed: `Lane` is the base of `Rewriter` (its
 * numbering), `Outlet` the base of `Consumer` (its gate, SSRC, sent-sequence map and temporal-layer
 * state), `PictureState` the base of `Vp8Pictures`, `Wire` what the server layer hands a player's
 * consumers (its SRTP context and socket). The Python fallback in fanout.py defines the same types
 * with the same fields.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>

#define MAX_DROPOUT 3000   /* wire/rtp.py */
#define MAX_MISORDER 1000  /* wire/rtp.py */
#define SEQUENCE_MAP 1024  /* media/fanout.py */
#define BUFFER_SIZE 1500   /* transport/srtp.py: pylibsrtp's buffer */
#define MAX_TRAILER 144    /* libsrtp's SRTP_MAX_TRAILER_LEN */
#define SRTP_MAX_INPUT (BUFFER_SIZE - MAX_TRAILER)

typedef int (*protect_fn)(void *ctx, void *rtp, int *length);

/* ---- Wire: one player's SRTP context and connected socket ---- */

typedef struct {
    PyObject_HEAD
    unsigned long long ctx;      /* srtp_t, 0: no keys yet */
    unsigned long long protect;  /* srtp_protect's address */
    int fd;                      /* the player's own connected UDP socket, -1: none */
    int shared_fd;               /* the unconnected socket on the same local address that sends the
                                    fan-out's packets to `peer` in batches, -1: send on fd */
    struct sockaddr_storage peer;
    socklen_t peer_length;
    long long send_errors;
    long long protect_failed;
    PyObject *keep;              /* what owns ctx (the SrtpSession): alive as long as ctx is set */
} Wire;

static int Wire_init(Wire *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "", kwlist)) return -1;
    self->ctx = 0;
    self->protect = 0;
    self->fd = -1;
    self->shared_fd = -1;
    return 0;
}

static int Wire_traverse(Wire *self, visitproc visit, void *arg) {
    Py_VISIT(self->keep);
    return 0;
}

static int Wire_clear(Wire *self) {
    self->ctx = 0;
    Py_CLEAR(self->keep);
    return 0;
}

static void Wire_dealloc(Wire *self) {
    PyObject_GC_UnTrack(self);
    Wire_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Wire_attach(Wire *self, PyObject *args) {
    unsigned long long ctx, protect;
    PyObject *keep;
    if (!PyArg_ParseTuple(args, "KKO", &ctx, &protect, &keep)) return NULL;
    Py_INCREF(keep);
    Py_XSETREF(self->keep, keep);
    self->ctx = ctx;
    self->protect = protect;
    Py_RETURN_NONE;
}

static PyObject *Wire_share(Wire *self, PyObject *arg) {
    long shared = PyLong_AsLong(arg);
    if (shared == -1 && PyErr_Occurred()) return NULL;
    self->shared_fd = -1;
    if (shared < 0) Py_RETURN_NONE;
    if (self->fd < 0) {
        PyErr_SetString(PyExc_ValueError, "share(): no connected socket (set fd first)");
        return NULL;
    }
    self->peer_length = sizeof self->peer;
    if (getpeername(self->fd, (struct sockaddr *)&self->peer, &self->peer_length) != 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    self->shared_fd = (int)shared;
    Py_RETURN_NONE;
}

static PyObject *Wire_get_fd(Wire *self, void *closure) {
    return PyLong_FromLong(self->fd);
}

static int Wire_set_fd(Wire *self, PyObject *value, void *closure) {
    if (value == NULL) {
        PyErr_SetString(PyExc_TypeError, "fd cannot be deleted");
        return -1;
    }
    long fd = PyLong_AsLong(value);
    if (fd == -1 && PyErr_Occurred()) return -1;
    self->fd = fd < 0 ? -1 : (int)fd;
    self->shared_fd = -1; /* a new socket (or none): its peer is read again by share() */
    return 0;
}

static PyObject *Wire_get_shared_fd(Wire *self, void *closure) {
    return PyLong_FromLong(self->shared_fd);
}

static PyObject *Wire_detach(Wire *self, PyObject *unused) {
    self->fd = -1;
    self->shared_fd = -1;
    Wire_clear(self);
    Py_RETURN_NONE;
}

static PyMemberDef Wire_members[] = {
    {"send_errors", T_LONGLONG, offsetof(Wire, send_errors), 0, NULL},
    {"protect_failed", T_LONGLONG, offsetof(Wire, protect_failed), 0, NULL},
    {NULL},
};

static PyObject *Wire_get_attached(Wire *self, void *closure) {
    return PyBool_FromLong(self->ctx != 0);
}

static PyGetSetDef Wire_getset[] = {
    {"attached", (getter)Wire_get_attached, NULL, "whether SRTP keys are set", NULL},
    {"fd", (getter)Wire_get_fd, (setter)Wire_set_fd,
     "the player's connected socket (-1: none); setting it undoes share()", NULL},
    {"shared_fd", (getter)Wire_get_shared_fd, NULL, "the socket share() sends through (-1: fd)", NULL},
    {NULL},
};

static PyMethodDef Wire_methods[] = {
    {"attach", (PyCFunction)Wire_attach, METH_VARARGS,
     "attach(ctx, protect, owner): protect with libsrtp context `ctx` (owner keeps it alive)"},
    {"share", (PyCFunction)Wire_share, METH_O,
     "share(fd): send the fan-out's packets to fd's peer through the unconnected socket `fd` of the same "
     "local address, batched (sendmmsg); fd itself still sends what that cannot"},
    {"detach", (PyCFunction)Wire_detach, METH_NOARGS, "no keys and no socket: the slow path"},
    {NULL},
};

static PyTypeObject WireType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "trio_sfu.media._fastpath.Wire",
    .tp_basicsize = sizeof(Wire),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "A player's SRTP context and connected socket, for the compiled fan-out.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Wire_init,
    .tp_traverse = (traverseproc)Wire_traverse,
    .tp_clear = (inquiry)Wire_clear,
    .tp_dealloc = (destructor)Wire_dealloc,
    .tp_members = Wire_members,
    .tp_getset = Wire_getset,
    .tp_methods = Wire_methods,
};

/* ---- Lane: the rewriter's numbering state (Rewriter's base class) ---- */

typedef struct {
    PyObject_HEAD
    char muted;
    char needs_sync;
    long long input_ssrc;
    int seq_offset;
    long long ts_offset;
    int max_input;
    int max_back;
    long long packets;
    long long octets;
    int last_sequence;
    long long last_timestamp;
    double last_sent_at;
    PyObject *drops;       /* list of input sequence numbers dropped lately */
    PyObject *pt_map;      /* list of 128 ints: publisher PT -> player PT, -1: drop */
    PyObject *header_map;  /* HeaderMap */
} Lane;

static int Lane_traverse(Lane *self, visitproc visit, void *arg) {
    Py_VISIT(self->drops);
    Py_VISIT(self->pt_map);
    Py_VISIT(self->header_map);
    return 0;
}

static int Lane_clear(Lane *self) {
    Py_CLEAR(self->drops);
    Py_CLEAR(self->pt_map);
    Py_CLEAR(self->header_map);
    return 0;
}

static void Lane_dealloc(Lane *self) {
    PyObject_GC_UnTrack(self);
    Lane_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMemberDef Lane_members[] = {
    {"_muted", T_BOOL, offsetof(Lane, muted), 0, NULL},
    {"_needs_sync", T_BOOL, offsetof(Lane, needs_sync), 0, NULL},
    {"_input_ssrc", T_LONGLONG, offsetof(Lane, input_ssrc), 0, NULL},
    {"_seq_offset", T_INT, offsetof(Lane, seq_offset), 0, NULL},
    {"_ts_offset", T_LONGLONG, offsetof(Lane, ts_offset), 0, NULL},
    {"_max_input", T_INT, offsetof(Lane, max_input), 0, NULL},
    {"_max_back", T_INT, offsetof(Lane, max_back), 0, NULL},
    {"packets", T_LONGLONG, offsetof(Lane, packets), 0, NULL},
    {"octets", T_LONGLONG, offsetof(Lane, octets), 0, NULL},
    {"last_sequence", T_INT, offsetof(Lane, last_sequence), 0, NULL},
    {"last_timestamp", T_LONGLONG, offsetof(Lane, last_timestamp), 0, NULL},
    {"last_sent_at", T_DOUBLE, offsetof(Lane, last_sent_at), 0, NULL},
    {"_drops", T_OBJECT_EX, offsetof(Lane, drops), 0, NULL},
    {"_pt_map", T_OBJECT_EX, offsetof(Lane, pt_map), 0, NULL},
    {"header_map", T_OBJECT_EX, offsetof(Lane, header_map), 0, NULL},
    {NULL},
};

static PyTypeObject LaneType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "trio_sfu.media._fastpath.Lane",
    .tp_basicsize = sizeof(Lane),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "A rewriter's numbering state, readable by the compiled fan-out.",
    .tp_new = PyType_GenericNew,
    .tp_traverse = (traverseproc)Lane_traverse,
    .tp_clear = (inquiry)Lane_clear,
    .tp_dealloc = (destructor)Lane_dealloc,
    .tp_members = Lane_members,
};

/* ---- PictureState: a simulcast VP8 player's picture numbering (Vp8Pictures' base class) ---- */

typedef struct {
    PyObject_HEAD
    int picture_offset;
    int tl0_offset;
    PyObject *last_picture; /* int, or None before the first picture */
    PyObject *last_tl0;     /* int, or None */
    PyObject *drops;        /* list: pictures dropped since the last switch */
    char needs_sync;
} PictureState;

static int PictureState_traverse(PictureState *self, visitproc visit, void *arg) {
    Py_VISIT(self->last_picture);
    Py_VISIT(self->last_tl0);
    Py_VISIT(self->drops);
    return 0;
}

static int PictureState_clear(PictureState *self) {
    Py_CLEAR(self->last_picture);
    Py_CLEAR(self->last_tl0);
    Py_CLEAR(self->drops);
    return 0;
}

static void PictureState_dealloc(PictureState *self) {
    PyObject_GC_UnTrack(self);
    PictureState_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMemberDef PictureState_members[] = {
    {"_picture_offset", T_INT, offsetof(PictureState, picture_offset), 0, NULL},
    {"_tl0_offset", T_INT, offsetof(PictureState, tl0_offset), 0, NULL},
    {"_last_picture", T_OBJECT, offsetof(PictureState, last_picture), 0, NULL},
    {"_last_tl0", T_OBJECT, offsetof(PictureState, last_tl0), 0, NULL},
    {"_drops", T_OBJECT_EX, offsetof(PictureState, drops), 0, NULL},
    {"needs_sync", T_BOOL, offsetof(PictureState, needs_sync), 0, NULL},
    {NULL},
};

static PyTypeObject PictureStateType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "trio_sfu.media._fastpath.PictureState",
    .tp_basicsize = sizeof(PictureState),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "A simulcast VP8 player's picture numbering, readable by the compiled fan-out.",
    .tp_new = PyType_GenericNew,
    .tp_traverse = (traverseproc)PictureState_traverse,
    .tp_clear = (inquiry)PictureState_clear,
    .tp_dealloc = (destructor)PictureState_dealloc,
    .tp_members = PictureState_members,
};

/* ---- Outlet: one player of one track (Consumer's base class) ---- */

typedef struct {
    PyObject_HEAD
    char ready;               /* the consumer's own gate: no keyframe awaited, no switch, no backlog */
    long long ssrc;
    long long timestamp_offset;
    PyObject *rewriter;       /* Lane */
    PyObject *wire;           /* Wire or None */
    PyObject *totals;         /* Totals */
    PyObject *pictures;       /* PictureState (simulcast VP8) or None */
    int temporal;             /* the highest VP8 temporal layer forwarded, and the one wanted */
    int temporal_target;
    long long frame_timestamp; /* the frame in progress and whether it is forwarded */
    char frame_forwarded;
    /* Output sequence -> input sequence of recent packets (a slot counts once written). */
    uint16_t sent_output[SEQUENCE_MAP];
    uint16_t sent_input[SEQUENCE_MAP];
    uint8_t written[SEQUENCE_MAP / 8];
} Outlet;

static PyObject *Outlet_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    return type->tp_alloc(type, 0); /* zeroed: no slot written */
}

static int Outlet_traverse(Outlet *self, visitproc visit, void *arg) {
    Py_VISIT(self->rewriter);
    Py_VISIT(self->wire);
    Py_VISIT(self->totals);
    Py_VISIT(self->pictures);
    return 0;
}

static int Outlet_clear(Outlet *self) {
    Py_CLEAR(self->rewriter);
    Py_CLEAR(self->wire);
    Py_CLEAR(self->totals);
    Py_CLEAR(self->pictures);
    return 0;
}

static void Outlet_dealloc(Outlet *self) {
    PyObject_GC_UnTrack(self);
    Outlet_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static inline void record(Outlet *self, uint32_t output, uint32_t source) {
    int slot = (int)(output % SEQUENCE_MAP);
    self->sent_output[slot] = (uint16_t)output;
    self->sent_input[slot] = (uint16_t)source;
    self->written[slot >> 3] |= (uint8_t)(1u << (slot & 7));
}

static PyObject *Outlet_record_sent(Outlet *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "record_sent(output, source)");
        return NULL;
    }
    long output = PyLong_AsLong(args[0]);
    long source = PyLong_AsLong(args[1]);
    if (PyErr_Occurred()) return NULL;
    record(self, (uint32_t)output & 0xFFFF, (uint32_t)source & 0xFFFF);
    Py_RETURN_NONE;
}

static PyObject *Outlet_sent_source(Outlet *self, PyObject *arg) {
    long output = PyLong_AsLong(arg);
    if (output == -1 && PyErr_Occurred()) return NULL;
    if (output < 0 || output > 0xFFFF) Py_RETURN_NONE;
    int slot = (int)(output % SEQUENCE_MAP);
    if (!(self->written[slot >> 3] & (1u << (slot & 7))) || self->sent_output[slot] != output)
        Py_RETURN_NONE;
    return PyLong_FromLong(self->sent_input[slot]);
}

static PyMemberDef Outlet_members[] = {
    {"_ready", T_BOOL, offsetof(Outlet, ready), 0, NULL},
    {"ssrc", T_LONGLONG, offsetof(Outlet, ssrc), 0, NULL},
    {"_timestamp_offset", T_LONGLONG, offsetof(Outlet, timestamp_offset), 0, NULL},
    {"rewriter", T_OBJECT_EX, offsetof(Outlet, rewriter), 0, NULL},
    {"_wire", T_OBJECT, offsetof(Outlet, wire), 0, NULL},
    {"totals", T_OBJECT_EX, offsetof(Outlet, totals), 0, NULL},
    {"pictures", T_OBJECT, offsetof(Outlet, pictures), 0, NULL},
    {"temporal", T_INT, offsetof(Outlet, temporal), 0, NULL},
    {"temporal_target", T_INT, offsetof(Outlet, temporal_target), 0, NULL},
    {"_frame_timestamp", T_LONGLONG, offsetof(Outlet, frame_timestamp), 0, NULL},
    {"_frame_forwarded", T_BOOL, offsetof(Outlet, frame_forwarded), 0, NULL},
    {NULL},
};

static PyMethodDef Outlet_methods[] = {
    {"record_sent", (PyCFunction)(void (*)(void))Outlet_record_sent, METH_FASTCALL,
     "record_sent(output, source): output sequence number `output` carried input `source`"},
    {"sent_source", (PyCFunction)Outlet_sent_source, METH_O,
     "the input sequence number recorded for `output`, or None"},
    {NULL},
};

static PyTypeObject OutletType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "trio_sfu.media._fastpath.Outlet",
    .tp_basicsize = sizeof(Outlet),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "A consumer's state that the compiled fan-out reads and writes.",
    .tp_new = Outlet_new,
    .tp_traverse = (traverseproc)Outlet_traverse,
    .tp_clear = (inquiry)Outlet_clear,
    .tp_dealloc = (destructor)Outlet_dealloc,
    .tp_members = Outlet_members,
    .tp_methods = Outlet_methods,
};

/* ---- fan_out ---- */

static PyObject *s_header_length, *s_forward, *s_apply, *s_would_block, *s_sequence, *s_timestamp, *s_ssrc,
    *s_payload_type, *s_payload_length, *s_rtp_packets_out, *s_rtp_bytes_out;

static unsigned char buffer[BUFFER_SIZE];

typedef struct {
    long sequence, payload_type, header_length;
    long long timestamp, ssrc, payload_length;
    double now;
    PyObject *packet, *header, *now_obj;
    PyObject *map, *mapped;       /* the last header map applied and its output (both held) */
    PyObject *totals;             /* counts not yet added to it */
    long long packets, octets;
    /* The packet's VP8 descriptor as its producer parsed it (Producer.last_descriptor), read at the
       first simulcast VP8 player: 0 not read yet, 1 read, -1 none to use (Python parses it). */
    int descriptor_state;
    long picture_id, picture_at, tl0_at, temporal_id;
    int wide;
} Round;

#define ALL_TEMPORAL 3 /* media/consumer.py: a temporal cap that drops nothing */

static long descriptor_long(PyObject *descriptor, const char *name, int *failed) {
    PyObject *value = PyObject_GetAttrString(descriptor, name);
    if (value == NULL) {
        PyErr_Clear();
        *failed = 1;
        return 0;
    }
    long result = PyLong_AsLong(value); /* bool is an int */
    Py_DECREF(value);
    if (result == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        *failed = 1;
    }
    return result;
}

/* Read the descriptor Producer.receive parsed for this packet, if it is this packet's. */
static void read_descriptor(PyObject *consumer, Round *round) {
    round->descriptor_state = -1;
    PyObject *producer = PyObject_GetAttrString(consumer, "producer");
    if (producer == NULL) {
        PyErr_Clear();
        return;
    }
    PyObject *last = PyObject_GetAttrString(producer, "last_descriptor");
    Py_DECREF(producer);
    if (last == NULL) {
        PyErr_Clear();
        return;
    }
    if (PyTuple_CheckExact(last) && PyTuple_GET_SIZE(last) == 2 && PyTuple_GET_ITEM(last, 0) == round->packet &&
        PyTuple_GET_ITEM(last, 1) != Py_None) {
        PyObject *descriptor = PyTuple_GET_ITEM(last, 1);
        int failed = 0;
        round->picture_id = descriptor_long(descriptor, "picture_id", &failed);
        round->picture_at = descriptor_long(descriptor, "picture_at", &failed);
        round->tl0_at = descriptor_long(descriptor, "tl0_at", &failed);
        round->temporal_id = descriptor_long(descriptor, "temporal_id", &failed);
        round->wide = (int)descriptor_long(descriptor, "wide", &failed);
        if (!failed) round->descriptor_state = 1;
    }
    Py_DECREF(last);
}

/* For a simulcast VP8 player in its steady case (no temporal cap, numbering in sync, no dropped
   picture pending): 1 and the numbers to write, else 0 (Python's forward takes it). Changes nothing. */
typedef struct {
    long picture, tl0;      /* the numbers to write (-1: none) */
    int picture_newest, tl0_newest;
    int new_frame;
} PictureStep;

static int plan_pictures(Outlet *outlet, Round *round, const unsigned char *mapped, Py_ssize_t size,
                         Py_ssize_t payload_start, PictureStep *step) {
    if (round->descriptor_state == 0) read_descriptor((PyObject *)outlet, round);
    if (round->descriptor_state != 1) return 0;
    if (outlet->temporal != ALL_TEMPORAL || outlet->temporal_target != ALL_TEMPORAL) return 0;
    if (outlet->pictures == NULL || !PyObject_TypeCheck(outlet->pictures, &PictureStateType)) return 0;
    PictureState *pictures = (PictureState *)outlet->pictures;
    if (pictures->needs_sync || pictures->drops == NULL || !PyList_CheckExact(pictures->drops) ||
        PyList_GET_SIZE(pictures->drops))
        return 0;
    step->new_frame = 0;
    if (round->temporal_id >= 0) {
        /* Consumer._temporal_passes with no cap: every frame passes; a frame already refused stays so */
        if (round->timestamp == outlet->frame_timestamp) {
            if (!outlet->frame_forwarded) return 0;
        } else {
            step->new_frame = 1;
        }
    }
    step->picture = step->tl0 = -1;
    step->picture_newest = step->tl0_newest = 0;
    if (round->picture_at >= 0) {
        if (pictures->last_picture == NULL || !PyLong_CheckExact(pictures->last_picture)) return 0;
        long last = PyLong_AsLong(pictures->last_picture);
        Py_ssize_t at = payload_start + round->picture_at;
        if (round->picture_id < 0 || at < 0 || at + (round->wide ? 1 : 0) >= size) return 0;
        step->picture = (round->picture_id + pictures->picture_offset) & 0x7FFF;
        step->picture_newest = 0 < ((step->picture - last) & 0x7FFF) && ((step->picture - last) & 0x7FFF) < 0x4000;
    }
    if (round->tl0_at >= 0) {
        if (pictures->last_tl0 == NULL || !PyLong_CheckExact(pictures->last_tl0)) return 0;
        long last = PyLong_AsLong(pictures->last_tl0);
        Py_ssize_t at = payload_start + round->tl0_at;
        if (at < 0 || at >= size) return 0;
        step->tl0 = (mapped[at] + pictures->tl0_offset) & 0xFF;
        step->tl0_newest = 0 < ((step->tl0 - last) & 0xFF) && ((step->tl0 - last) & 0xFF) < 0x80;
    }
    return 1;
}

/* Vp8Pictures.rewrite's bytes: the planned picture id and TL0PICIDX into `out`, a copy of the mapped
   packet whose payload starts at `payload_start` (bounds checked by plan_pictures). */
static void write_pictures(unsigned char *out, const Round *round, const PictureStep *step,
                           Py_ssize_t payload_start) {
    if (step->picture >= 0) {
        Py_ssize_t at = payload_start + round->picture_at;
        if (round->wide) {
            out[at] = (unsigned char)(0x80 | (step->picture >> 8));
            out[at + 1] = (unsigned char)(step->picture & 0xFF);
        } else {
            out[at] = (unsigned char)(step->picture & 0x7F);
        }
    }
    if (step->tl0 >= 0) out[payload_start + round->tl0_at] = (unsigned char)step->tl0;
}

/* Vp8Pictures.rewrite's bookkeeping for a planned step (-1: a Python error is set). */
static int commit_pictures(Outlet *outlet, Round *round, const PictureStep *step) {
    PictureState *pictures = (PictureState *)outlet->pictures;
    if (step->new_frame) {
        outlet->frame_timestamp = round->timestamp;
        outlet->frame_forwarded = 1;
    }
    if (step->picture_newest) {
        PyObject *value = PyLong_FromLong(step->picture);
        if (value == NULL) return -1;
        Py_XSETREF(pictures->last_picture, value);
    }
    if (step->tl0_newest) {
        PyObject *value = PyLong_FromLong(step->tl0);
        if (value == NULL) return -1;
        Py_XSETREF(pictures->last_tl0, value);
    }
    return 0;
}

static long header_long(PyObject *header, PyObject *name, int *failed) {
    PyObject *value = PyObject_GetAttr(header, name);
    if (value == NULL) {
        *failed = 1;
        return 0;
    }
    long long result = PyLong_AsLongLong(value);
    Py_DECREF(value);
    if (result == -1 && PyErr_Occurred()) *failed = 1;
    return (long)result;
}

static int add_to(PyObject *totals, PyObject *name, long long amount) {
    PyObject *value = PyObject_GetAttr(totals, name);
    if (value == NULL) return -1;
    PyObject *delta = PyLong_FromLongLong(amount);
    PyObject *sum = delta ? PyNumber_Add(value, delta) : NULL;
    Py_DECREF(value);
    Py_XDECREF(delta);
    if (sum == NULL) return -1;
    int status = PyObject_SetAttr(totals, name, sum);
    Py_DECREF(sum);
    return status;
}

static int flush_totals(Round *round) {
    int status = 0;
    if (round->totals != NULL && round->packets) {
        if (add_to(round->totals, s_rtp_packets_out, round->packets) < 0 ||
            add_to(round->totals, s_rtp_bytes_out, round->octets) < 0)
            status = -1;
    }
    round->packets = round->octets = 0;
    Py_CLEAR(round->totals);
    return status;
}

/* ---- sending: now on a player's own socket, or in batches through the shared one ---- */

/* What a protected packet needs until it is sent: to count it, or to queue it when the kernel
   refuses it for now. A batched one holds outlet, wire and mapped until its batch is sent. */
typedef struct {
    Outlet *outlet;
    Wire *wire;
    PyObject *mapped; /* the header-mapped packet before this player's fields were written */
    Py_ssize_t size, payload_start;
    PictureStep step;
    int simulcast_vp8, length;
    uint32_t out_sequence, out_timestamp;
} Pending;

/* One sendmmsg on one socket for up to BATCH players of one packet, instead of a send on each
   player's socket: less kernel entry and exit, and one socket's state in the cache instead of
   hundreds (pinned, 300 players: 0.89 of the CPU per forwarded packet; docs/performance.md). */
#define BATCH 32
static unsigned char batch_buffers[BATCH][BUFFER_SIZE];
static struct iovec batch_vectors[BATCH];
static struct mmsghdr batch_messages[BATCH];
static Pending batch[BATCH];
static int batch_size = 0, batch_fd = -1;

static int count_sent(Outlet *outlet, Round *round, int length) {
    if (outlet->totals == NULL) return 1;
    if (outlet->totals != round->totals) {
        if (flush_totals(round) < 0) return -1;
        Py_INCREF(outlet->totals);
        round->totals = outlet->totals;
    }
    round->packets += 1;
    round->octets += length;
    return 1;
}

/* The kernel buffer is full: the consumer queues it, as Python's path does (the mapped packet, with
   this player's picture numbers written in its own copy). */
static int queue_blocked(const Pending *pending, Round *round) {
    PyObject *queued = pending->mapped;
    Py_INCREF(queued);
    if (pending->simulcast_vp8) {
        PyObject *copy = PyBytes_FromStringAndSize(PyBytes_AS_STRING(pending->mapped), pending->size);
        if (copy == NULL) {
            Py_DECREF(queued);
            return -1;
        }
        write_pictures((unsigned char *)PyBytes_AS_STRING(copy), round, &pending->step, pending->payload_start);
        Py_SETREF(queued, copy);
    }
    PyObject *number = PyLong_FromUnsignedLong(pending->out_sequence);
    PyObject *stamp = PyLong_FromUnsignedLong(pending->out_timestamp);
    PyObject *result = NULL;
    if (number != NULL && stamp != NULL)
        result = PyObject_CallMethodObjArgs((PyObject *)pending->outlet, s_would_block, queued, number, stamp,
                                            NULL);
    Py_DECREF(queued);
    Py_XDECREF(number);
    Py_XDECREF(stamp);
    if (result == NULL) return -1;
    Py_DECREF(result);
    return 1;
}

/* 1: sent, queued or counted as failed; -1: a Python error is set. */
static int send_on_own_socket(const Pending *pending, const unsigned char *data, Round *round) {
    Wire *wire = pending->wire;
    ssize_t sent = -1;
    errno = EBADF;
    if (wire->fd >= 0) sent = send(wire->fd, data, (size_t)pending->length, MSG_DONTWAIT);
    if (sent < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK) return queue_blocked(pending, round);
        wire->send_errors += 1; /* UDP promises nothing: counted, and sent as far as we know */
    }
    return count_sent(pending->outlet, round, pending->length);
}

/* Send the batch. A message sendmmsg stops at (its error is not reported once others were sent) is
   sent on the player's own socket, which has its own buffer and reports its own error. */
static int flush_batch(Round *round) {
    int status = 0, count = batch_size, start = 0;
    while (start < count) {
        int sent = (int)sendmmsg(batch_fd, batch_messages + start, (unsigned int)(count - start), MSG_DONTWAIT);
        if (sent < 0) sent = 0;
        for (int i = start; i < start + sent; i++)
            if (status == 0 && count_sent(batch[i].outlet, round, batch[i].length) < 0) status = -1;
        start += sent;
        if (start < count) {
            if (status == 0 && send_on_own_socket(&batch[start], batch_buffers[start], round) < 0) status = -1;
            start += 1;
        }
    }
    PyObject *held[3 * BATCH];
    for (int i = 0; i < count; i++) {
        held[3 * i] = (PyObject *)batch[i].outlet;
        held[3 * i + 1] = (PyObject *)batch[i].wire;
        held[3 * i + 2] = batch[i].mapped;
    }
    batch_size = 0;
    batch_fd = -1;
    for (int i = 0; i < 3 * count; i++) Py_DECREF(held[i]);
    return status;
}

/* 1: sent (or queued) here; 0: Python's forward must take it; -1: a Python error is set. */
static int forward_fast(Outlet *outlet, Round *round) {
    if (!outlet->ready || !PyObject_TypeCheck(outlet->rewriter, &LaneType)) return 0;
    Lane *lane = (Lane *)outlet->rewriter;
    if (lane->muted || lane->needs_sync || lane->input_ssrc != round->ssrc) return 0;
    if (lane->drops == NULL || !PyList_CheckExact(lane->drops) || PyList_GET_SIZE(lane->drops)) return 0;
    if (lane->pt_map == NULL || !PyList_CheckExact(lane->pt_map) ||
        PyList_GET_SIZE(lane->pt_map) <= round->payload_type)
        return 0;
    long pt = PyLong_AsLong(PyList_GET_ITEM(lane->pt_map, round->payload_type));
    if (pt < 0) {
        PyErr_Clear();
        return 0;
    }
    int delta = (int)((round->sequence - lane->max_input) & 0xFFFF);
    if (!(0 < delta && delta < MAX_DROPOUT)) return 0;
    if (outlet->wire == NULL || Py_TYPE(outlet->wire) != &WireType) return 0;
    Wire *wire = (Wire *)outlet->wire;
    if (wire->fd < 0 || wire->ctx == 0 || wire->protect == 0) return 0;
    if (outlet->totals == NULL || lane->header_map == NULL) return 0;
    /* One socket per batch; and Python runs only between batches. */
    if (batch_size && (batch_fd != wire->shared_fd || lane->header_map != round->map) && flush_batch(round) < 0)
        return -1;

    if (lane->header_map != round->map) {
        PyObject *mapped = PyObject_CallMethodObjArgs(
            lane->header_map, s_apply, round->packet, round->header, round->now_obj, NULL);
        if (mapped == NULL) return -1;
        Py_XSETREF(round->mapped, mapped);
        Py_INCREF(lane->header_map); /* held: a map freed mid-round must not be taken for a new one */
        Py_XSETREF(round->map, lane->header_map);
    }
    PyObject *mapped = round->mapped;
    if (!PyBytes_CheckExact(mapped)) return 0;
    Py_ssize_t size = PyBytes_GET_SIZE(mapped);
    if (size < 12 || size > SRTP_MAX_INPUT) return 0; /* Python's path counts why */
    PictureStep step;
    Py_ssize_t payload_start = size - PyBytes_GET_SIZE(round->packet) + round->header_length;
    int simulcast_vp8 = outlet->pictures != NULL && outlet->pictures != Py_None;
    if (simulcast_vp8 &&
        !plan_pictures(outlet, round, (const unsigned char *)PyBytes_AS_STRING(mapped), size, payload_start,
                       &step))
        return 0;

    /* Rewriter.number, the newest-packet case */
    lane->max_input = (int)round->sequence;
    int back = lane->max_back + delta;
    lane->max_back = back > MAX_MISORDER ? MAX_MISORDER : back;
    uint32_t out_sequence = (uint32_t)((round->sequence + lane->seq_offset) & 0xFFFF);
    uint32_t out_timestamp = (uint32_t)((round->timestamp + lane->ts_offset) & 0xFFFFFFFFLL);
    lane->packets += 1;
    lane->octets += round->payload_length;
    lane->last_sequence = (int)out_sequence;
    lane->last_timestamp = out_timestamp;
    lane->last_sent_at = round->now;
    /* Consumer.forward's bookkeeping */
    record(outlet, out_sequence, (uint32_t)round->sequence);
    outlet->timestamp_offset = (long long)((out_timestamp - (uint32_t)round->timestamp) & 0xFFFFFFFFu);
    /* Consumer._temporal_passes and Vp8Pictures.rewrite's bookkeeping (simulcast VP8) */
    if (simulcast_vp8 && commit_pictures(outlet, round, &step) < 0) return -1;

    /* SrtpSession.protect_rtp_as, then a send: batched through the shared socket where the wire
       has one, else on the player's connected socket now */
    int batched = wire->shared_fd >= 0;
    unsigned char *out = batched ? batch_buffers[batch_size] : buffer;
    memcpy(out, PyBytes_AS_STRING(mapped), (size_t)size);
    uint32_t ssrc = (uint32_t)outlet->ssrc;
    out[2] = (unsigned char)(out_sequence >> 8);
    out[3] = (unsigned char)out_sequence;
    out[4] = (unsigned char)(out_timestamp >> 24);
    out[5] = (unsigned char)(out_timestamp >> 16);
    out[6] = (unsigned char)(out_timestamp >> 8);
    out[7] = (unsigned char)out_timestamp;
    out[8] = (unsigned char)(ssrc >> 24);
    out[9] = (unsigned char)(ssrc >> 16);
    out[10] = (unsigned char)(ssrc >> 8);
    out[11] = (unsigned char)ssrc;
    if (simulcast_vp8) write_pictures(out, round, &step, payload_start); /* this player's numbers */
    int length = (int)size;
    if (((protect_fn)(uintptr_t)wire->protect)((void *)(uintptr_t)wire->ctx, out, &length) != 0) {
        wire->protect_failed += 1;
        return 1;
    }
    Pending sending = {outlet, wire, mapped, size, payload_start, step, simulcast_vp8, length,
                       out_sequence, out_timestamp};
    if (!batched) return send_on_own_socket(&sending, out, round);
    Pending *pending = &batch[batch_size];
    *pending = sending;
    Py_INCREF(outlet);
    Py_INCREF(wire);
    Py_INCREF(mapped);
    batch_vectors[batch_size] = (struct iovec){.iov_base = out, .iov_len = (size_t)length};
    batch_messages[batch_size].msg_hdr = (struct msghdr){
        .msg_name = &wire->peer,
        .msg_namelen = wire->peer_length,
        .msg_iov = &batch_vectors[batch_size],
        .msg_iovlen = 1,
    };
    batch_fd = wire->shared_fd;
    batch_size += 1;
    if (batch_size == BATCH && flush_batch(round) < 0) return -1;
    return 1;
}

/* The state of the players after this one, fetched while this one's packet is protected and sent:
   with hundreds of players it has left the cache by the time its turn comes. In stages, each reading
   only what an earlier one fetched: the consumer (i + 3), its rewriter and wire (i + 2), the slot of
   its sent-sequence map and its SRTP context (i + 1). Reads nothing a miss would stall on. */
static inline void prefetch_ahead(PyObject *consumers, Py_ssize_t i, const Round *round) {
    Py_ssize_t size = PyList_GET_SIZE(consumers);
    if (i + 3 < size) __builtin_prefetch(PyList_GET_ITEM(consumers, i + 3));
    if (i + 2 < size) {
        PyObject *consumer = PyList_GET_ITEM(consumers, i + 2);
        if (PyObject_TypeCheck(consumer, &OutletType)) {
            __builtin_prefetch(((Outlet *)consumer)->rewriter);
            __builtin_prefetch(((Outlet *)consumer)->wire);
        }
    }
    if (i + 1 < size) {
        PyObject *consumer = PyList_GET_ITEM(consumers, i + 1);
        if (!PyObject_TypeCheck(consumer, &OutletType)) return;
        Outlet *outlet = (Outlet *)consumer;
        if (outlet->rewriter != NULL && PyObject_TypeCheck(outlet->rewriter, &LaneType)) {
            uint32_t slot = (uint32_t)((round->sequence + ((Lane *)outlet->rewriter)->seq_offset) & 0xFFFF) %
                            SEQUENCE_MAP;
            __builtin_prefetch(&outlet->sent_output[slot], 1);
            __builtin_prefetch(&outlet->sent_input[slot], 1);
            __builtin_prefetch(&outlet->written[slot / 8], 1);
        }
        if (outlet->wire != NULL && Py_TYPE(outlet->wire) == &WireType && ((Wire *)outlet->wire)->ctx)
            __builtin_prefetch((void *)(uintptr_t)((Wire *)outlet->wire)->ctx);
    }
}

static PyObject *fan_out(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4 || !PyList_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "fan_out(consumers: list, packet, header, now)");
        return NULL;
    }
    PyObject *consumers = args[0];
    Round round = {0};
    int failed = 0;
    round.packet = args[1];
    round.header = args[2];
    round.now_obj = args[3];
    round.now = PyFloat_AsDouble(args[3]);
    if (round.now == -1.0 && PyErr_Occurred()) return NULL;
    round.sequence = header_long(round.header, s_sequence, &failed);
    round.timestamp = header_long(round.header, s_timestamp, &failed);
    round.ssrc = header_long(round.header, s_ssrc, &failed);
    round.payload_type = header_long(round.header, s_payload_type, &failed);
    round.payload_length = header_long(round.header, s_payload_length, &failed);
    round.header_length = header_long(round.header, s_header_length, &failed);
    if (failed) return NULL;
    if (round.payload_type < 0 || round.payload_type > 127) round.payload_type = 0x7FFF;

    int status = 0;
    /* The list may change under a Python forward (a layer switch): read its length every time. */
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(consumers); i++) {
        PyObject *consumer = PyList_GET_ITEM(consumers, i);
        Py_INCREF(consumer);
        prefetch_ahead(consumers, i, &round);
        int done = 0;
        if (PyObject_TypeCheck(consumer, &OutletType)) done = forward_fast((Outlet *)consumer, &round);
        if (done == 0 && batch_size && flush_batch(&round) < 0) done = -1; /* Python runs between batches */
        if (done == 0) {
            PyObject *result = PyObject_CallMethodObjArgs(consumer, s_forward, round.packet, round.header,
                                                          round.now_obj, NULL);
            if (result == NULL)
                done = -1;
            else
                Py_DECREF(result);
        }
        Py_DECREF(consumer);
        if (done < 0) {
            status = -1;
            break;
        }
    }
    if (status == 0 && batch_size && flush_batch(&round) < 0) status = -1;
    Py_CLEAR(round.mapped);
    Py_CLEAR(round.map);
    if (status < 0) {
        PyObject *type, *value, *traceback;
        PyErr_Fetch(&type, &value, &traceback);
        if (batch_size && flush_batch(&round) < 0) PyErr_Clear(); /* protected: sent even after an error */
        if (flush_totals(&round) < 0) PyErr_Clear();
        PyErr_Restore(type, value, traceback);
        return NULL;
    }
    if (flush_totals(&round) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"fan_out", (PyCFunction)(void (*)(void))fan_out, METH_FASTCALL,
     "fan_out(consumers, packet, header, now): forward one packet to every consumer, in order"},
    {NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "trio_sfu.media._fastpath",
    "The fan-out's compiled inner loop (see trio_sfu/media/fanout.py).", -1, module_methods,
};

#define INTERN(var, text) \
    if ((var = PyUnicode_InternFromString(text)) == NULL) return NULL

PyMODINIT_FUNC PyInit__fastpath(void) {
    INTERN(s_forward, "forward");
    INTERN(s_apply, "apply");
    INTERN(s_would_block, "_would_block");
    INTERN(s_sequence, "sequence");
    INTERN(s_timestamp, "timestamp");
    INTERN(s_ssrc, "ssrc");
    INTERN(s_payload_type, "payload_type");
    INTERN(s_payload_length, "payload_length");
    INTERN(s_header_length, "header_length");
    INTERN(s_rtp_packets_out, "rtp_packets_out");
    INTERN(s_rtp_bytes_out, "rtp_bytes_out");
    if (PyType_Ready(&WireType) < 0 || PyType_Ready(&LaneType) < 0 || PyType_Ready(&OutletType) < 0 ||
        PyType_Ready(&PictureStateType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    if (PyModule_AddObjectRef(m, "Wire", (PyObject *)&WireType) < 0 ||
        PyModule_AddObjectRef(m, "Lane", (PyObject *)&LaneType) < 0 ||
        PyModule_AddObjectRef(m, "Outlet", (PyObject *)&OutletType) < 0 ||
        PyModule_AddObjectRef(m, "PictureState", (PyObject *)&PictureStateType) < 0 ||
        PyModule_AddIntConstant(m, "MAX_INPUT", SRTP_MAX_INPUT) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
