/* SRTP protection of outgoing RTP with AEAD_AES_128_GCM (RFC 7714), without libsrtp's bookkeeping.
 *
 * Per packet libsrtp looks the SSRC's stream up in a list, updates a key-usage counter and shifts a
 * 1024-bit replay bitmap before it calls OpenSSL; for a sender only one outcome of all that is
 * visible on the wire: the packet index (rollover counter and sequence number) it estimates. This
 * keeps that index per SSRC the way libsrtp estimates it (srtp_rdbx_estimate_index, srtp_rdbx_check
 * with allow_repeat_tx) and calls OpenSSL's AES-GCM itself, so the bytes are libsrtp's
 * (tests/transport/test_srtp_gcm.py compares them) at about half the cost.
 *
 * OpenSSL's libcrypto is loaded at import (dlopen), so no OpenSSL headers are needed to build this;
 * without libcrypto the import fails and trio_sfu.transport.srtp keeps libsrtp for everything.
 * The session key and salt come from Python (trio_sfu.transport.srtp derives them).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <dlfcn.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define KEY_LEN 16
#define SALT_LEN 12
#define TAG_LEN 16
#define BUFFER_SIZE 1500              /* pylibsrtp's buffer, and the fan-out's */
#define MAX_PROTECT_INPUT (BUFFER_SIZE - 144) /* what pylibsrtp's protect accepts (SRTP_MAX_TRAILER_LEN) */
#define WINDOW 1024                   /* trio_sfu.transport.srtp.RETRANSMIT_WINDOW */
#define SEQ_MEDIAN 0x8000
#define SEQ_MAX 0x10000
#define EVP_CTRL_GCM_GET_TAG 0x10

/* libsrtp's status codes, for the errors callers see */
#define STATUS_OK 0
#define STATUS_BAD_PARAM 2
#define STATUS_CIPHER_FAIL 8
#define STATUS_REPLAY_OLD 10

typedef const void *(*cipher_fn)(void);
typedef void *(*ctx_new_fn)(void);
typedef void (*ctx_free_fn)(void *);
typedef int (*init_fn)(void *, const void *, void *, const unsigned char *, const unsigned char *);
typedef int (*update_fn)(void *, unsigned char *, int *, const unsigned char *, int);
typedef int (*final_fn)(void *, unsigned char *, int *);
typedef int (*ctrl_fn)(void *, int, int, void *);

static struct {
    cipher_fn aes_128_gcm;
    ctx_new_fn ctx_new;
    ctx_free_fn ctx_free;
    init_fn init;
    update_fn update;
    final_fn final;
    ctrl_fn ctrl;
} evp;

typedef struct {
    uint32_t ssrc;
    uint64_t index; /* libsrtp's srtp_xtd_seq_num_t: rollover counter << 16 | sequence number */
} Stream;

typedef struct {
    PyObject_HEAD
    void *ctx; /* EVP_CIPHER_CTX, keyed once */
    unsigned char salt[SALT_LEN];
    Stream *streams;
    Py_ssize_t count, capacity;
} GcmSender;

static Stream *find_stream(GcmSender *self, uint32_t ssrc) {
    for (Py_ssize_t i = 0; i < self->count; i++)
        if (self->streams[i].ssrc == ssrc) return &self->streams[i];
    if (self->count == self->capacity) {
        Py_ssize_t capacity = self->capacity ? 2 * self->capacity : 4;
        Stream *grown = realloc(self->streams, (size_t)capacity * sizeof(Stream));
        if (grown == NULL) return NULL;
        self->streams = grown;
        self->capacity = capacity;
    }
    Stream *stream = &self->streams[self->count++];
    stream->ssrc = ssrc;
    stream->index = 0; /* a new libsrtp stream's */
    return stream;
}

/* srtp_rdbx_estimate_index: the index of sequence number `s`, and how far it is past the newest. */
static int64_t estimate(uint64_t local, uint16_t s, uint64_t *guess) {
    if (local <= SEQ_MEDIAN) {
        *guess = s;
        return (int64_t)s - (int64_t)(uint16_t)local;
    }
    uint32_t local_roc = (uint32_t)(local >> 16), roc = local_roc;
    int32_t local_seq = (uint16_t)local, seq = s;
    int64_t difference = seq - local_seq;
    if (local_seq < SEQ_MEDIAN) {
        if (seq - local_seq > SEQ_MEDIAN) {
            roc = local_roc - 1;
            difference = seq - local_seq - SEQ_MAX;
        }
    } else if (local_seq - SEQ_MEDIAN > seq) {
        roc = local_roc + 1;
        difference = seq - local_seq + SEQ_MAX;
    }
    *guess = ((uint64_t)roc << 16) | (uint16_t)s;
    return difference;
}

/* srtp_protect's contract: `rtp` holds `*length` bytes of RTP and room for the tag; on success the
   packet is encrypted in place, the tag appended and `*length` updated. Returns a libsrtp status. */
static int gcm_protect(void *context, void *rtp, int *length) {
    GcmSender *self = (GcmSender *)context;
    unsigned char *packet = rtp;
    int size = *length;
    if (self->ctx == NULL) return STATUS_CIPHER_FAIL; /* never initialised: no key */
    if (size < 12) return STATUS_BAD_PARAM;
    int header = 12 + 4 * (packet[0] & 0x0F);
    if (size < header) return STATUS_BAD_PARAM;
    if (packet[0] & 0x10) {
        if (size < header + 4) return STATUS_BAD_PARAM;
        header += 4 + 4 * ((packet[header + 2] << 8) | packet[header + 3]);
        if (size < header) return STATUS_BAD_PARAM;
    }
    uint32_t ssrc = ((uint32_t)packet[8] << 24) | ((uint32_t)packet[9] << 16) | ((uint32_t)packet[10] << 8) |
                    packet[11];
    uint16_t sequence = (uint16_t)((packet[2] << 8) | packet[3]);
    Stream *stream = find_stream(self, ssrc);
    if (stream == NULL) return STATUS_CIPHER_FAIL;
    uint64_t index;
    int64_t delta = estimate(stream->index, sequence, &index);
    if (delta > 0)
        stream->index = index;
    else if (WINDOW - 1 + delta < 0)
        return STATUS_REPLAY_OLD; /* older than libsrtp's window; a repeat inside it is allowed */

    /* RFC 7714 §8.1: 00 00 | SSRC | ROC | SEQ, XOR the session salt */
    unsigned char iv[SALT_LEN] = {0};
    uint32_t roc = (uint32_t)(index >> 16);
    memcpy(iv + 2, packet + 8, 4);
    iv[6] = (unsigned char)(roc >> 24);
    iv[7] = (unsigned char)(roc >> 16);
    iv[8] = (unsigned char)(roc >> 8);
    iv[9] = (unsigned char)roc;
    iv[10] = (unsigned char)(sequence >> 8);
    iv[11] = (unsigned char)sequence;
    for (int i = 0; i < SALT_LEN; i++) iv[i] ^= self->salt[i];

    int out = 0, payload = size - header;
    unsigned char *start = packet + header;
    if (evp.init(self->ctx, NULL, NULL, NULL, iv) != 1 || evp.update(self->ctx, NULL, &out, packet, header) != 1 ||
        (payload > 0 && evp.update(self->ctx, start, &out, start, payload) != 1) ||
        evp.final(self->ctx, start + payload, &out) != 1 ||
        evp.ctrl(self->ctx, EVP_CTRL_GCM_GET_TAG, TAG_LEN, start + payload) != 1)
        return STATUS_CIPHER_FAIL;
    *length = size + TAG_LEN;
    return STATUS_OK;
}

static int GcmSender_init(GcmSender *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"key", "salt", NULL};
    Py_buffer key, salt;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y*y*", kwlist, &key, &salt)) return -1;
    int ok = key.len == KEY_LEN && salt.len == SALT_LEN;
    if (ok) {
        memcpy(self->salt, salt.buf, SALT_LEN);
        if (self->ctx == NULL) self->ctx = evp.ctx_new();
        ok = self->ctx != NULL && evp.init(self->ctx, evp.aes_128_gcm(), NULL, key.buf, NULL) == 1;
        if (!ok) PyErr_SetString(PyExc_RuntimeError, "OpenSSL refused the AES-128-GCM key");
    } else {
        PyErr_Format(PyExc_ValueError, "need a %d-byte key and a %d-byte salt", KEY_LEN, SALT_LEN);
    }
    PyBuffer_Release(&key);
    PyBuffer_Release(&salt);
    self->count = 0;
    return ok ? 0 : -1;
}

static void GcmSender_dealloc(GcmSender *self) {
    if (self->ctx != NULL) evp.ctx_free(self->ctx);
    free(self->streams);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *protected_copy(GcmSender *self, const char *data, Py_ssize_t size, const unsigned char *fields) {
    if (size > MAX_PROTECT_INPUT) return PyErr_Format(PyExc_ValueError, "cannot protect RTP packet of %zd bytes", size);
    if (fields != NULL && size < 12)
        return PyErr_Format(PyExc_ValueError, "cannot protect RTP packet of %zd bytes", size);
    unsigned char buffer[BUFFER_SIZE];
    memcpy(buffer, data, (size_t)size);
    if (fields != NULL) memcpy(buffer + 2, fields, 10); /* sequence number, timestamp, SSRC */
    int length = (int)size;
    int status = gcm_protect(self, buffer, &length);
    if (status != STATUS_OK) return PyErr_Format(PyExc_ValueError, "cannot protect RTP packet: status %d", status);
    return PyBytes_FromStringAndSize((const char *)buffer, length);
}

static PyObject *GcmSender_protect(GcmSender *self, PyObject *arg) {
    Py_buffer packet;
    if (PyObject_GetBuffer(arg, &packet, PyBUF_SIMPLE) < 0) return NULL;
    PyObject *result = protected_copy(self, packet.buf, packet.len, NULL);
    PyBuffer_Release(&packet);
    return result;
}

static PyObject *GcmSender_protect_as(GcmSender *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "protect_as(packet, sequence, timestamp, ssrc)");
        return NULL;
    }
    unsigned long sequence = PyLong_AsUnsignedLong(args[1]);
    unsigned long timestamp = PyLong_AsUnsignedLong(args[2]);
    unsigned long ssrc = PyLong_AsUnsignedLong(args[3]);
    if (PyErr_Occurred()) return NULL;
    if (sequence > 0xFFFF || timestamp > 0xFFFFFFFFul || ssrc > 0xFFFFFFFFul) {
        PyErr_SetString(PyExc_OverflowError, "sequence, timestamp or SSRC out of range");
        return NULL;
    }
    unsigned char fields[10] = {
        (unsigned char)(sequence >> 8),   (unsigned char)sequence,         (unsigned char)(timestamp >> 24),
        (unsigned char)(timestamp >> 16), (unsigned char)(timestamp >> 8), (unsigned char)timestamp,
        (unsigned char)(ssrc >> 24),      (unsigned char)(ssrc >> 16),     (unsigned char)(ssrc >> 8),
        (unsigned char)ssrc,
    };
    Py_buffer packet;
    if (PyObject_GetBuffer(args[0], &packet, PyBUF_SIMPLE) < 0) return NULL;
    PyObject *result = protected_copy(self, packet.buf, packet.len, fields);
    PyBuffer_Release(&packet);
    return result;
}

static PyObject *GcmSender_get_handles(GcmSender *self, void *closure) {
    return Py_BuildValue("(KK)", (unsigned long long)(uintptr_t)self,
                         (unsigned long long)(uintptr_t)&gcm_protect);
}

static PyMethodDef GcmSender_methods[] = {
    {"protect", (PyCFunction)GcmSender_protect, METH_O, "protect(packet) -> SRTP packet (ValueError if it cannot)"},
    {"protect_as", (PyCFunction)(void (*)(void))GcmSender_protect_as, METH_FASTCALL,
     "protect_as(packet, sequence, timestamp, ssrc): protect with those three header fields replaced"},
    {NULL},
};

static PyGetSetDef GcmSender_getset[] = {
    {"handles", (getter)GcmSender_get_handles, NULL,
     "(context, protect): this sender's address and a function with srtp_protect's signature, for the "
     "compiled fan-out (keep the sender alive while they are used)",
     NULL},
    {NULL},
};

static PyTypeObject GcmSenderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "trio_sfu.transport._srtp_gcm.GcmSender",
    .tp_basicsize = sizeof(GcmSender),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Outgoing RTP of one SRTP session with AEAD_AES_128_GCM: GcmSender(session_key, session_salt).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)GcmSender_init,
    .tp_dealloc = (destructor)GcmSender_dealloc,
    .tp_methods = GcmSender_methods,
    .tp_getset = GcmSender_getset,
};

static int load_libcrypto(void) {
    const char *names[] = {"libcrypto.so.3", "libcrypto.so"};
    void *library = NULL;
    for (size_t i = 0; i < sizeof names / sizeof names[0] && library == NULL; i++)
        library = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
    if (library == NULL) return -1;
    *(void **)&evp.aes_128_gcm = dlsym(library, "EVP_aes_128_gcm");
    *(void **)&evp.ctx_new = dlsym(library, "EVP_CIPHER_CTX_new");
    *(void **)&evp.ctx_free = dlsym(library, "EVP_CIPHER_CTX_free");
    *(void **)&evp.init = dlsym(library, "EVP_EncryptInit_ex");
    *(void **)&evp.update = dlsym(library, "EVP_EncryptUpdate");
    *(void **)&evp.final = dlsym(library, "EVP_EncryptFinal_ex");
    *(void **)&evp.ctrl = dlsym(library, "EVP_CIPHER_CTX_ctrl");
    if (!evp.aes_128_gcm || !evp.ctx_new || !evp.ctx_free || !evp.init || !evp.update || !evp.final || !evp.ctrl)
        return -1;
    return 0;
}

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "trio_sfu.transport._srtp_gcm",
    "SRTP protection of outgoing RTP with AEAD_AES_128_GCM (see trio_sfu/transport/srtp.py).", -1, NULL,
};

PyMODINIT_FUNC PyInit__srtp_gcm(void) {
    if (load_libcrypto() < 0) {
        PyErr_SetString(PyExc_ImportError, "OpenSSL's libcrypto (libcrypto.so.3) could not be loaded");
        return NULL;
    }
    if (PyType_Ready(&GcmSenderType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    if (PyModule_AddObjectRef(m, "GcmSender", (PyObject *)&GcmSenderType) < 0 ||
        PyModule_AddIntConstant(m, "MAX_INPUT", MAX_PROTECT_INPUT) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
