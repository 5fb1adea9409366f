/*
 * FastMmap.xs -- Perl glue for the Rust engine of Cache::FastMmap.
 *
 * This layer only converts between Perl scalars and bytes, croaks with the
 * engine's message when a call failed, and builds the result lists.  It knows
 * nothing about pages, slots or the file format: that is all in rust/.
 *
 * Rules kept throughout (the die-safety rules of README.pod, "SAFETY"):
 *   - no Perl code runs while this handle holds a page lock, except the
 *     callbacks upstream runs under the lock (get_and_set's code, and from
 *     the Perl layer read_cb, write_cb of write-back, delete_cb), and those
 *     only inside an unwind guard that releases the lock on any exit.  So:
 *     keys and values are turned into bytes (get-magic, FETCH, overloading)
 *     before locking, and the engine's warnings are queued while a lock is
 *     held and passed to warn() only after it is released;
 *   - a lock taken by the fc_lock primitive is tied to the calling Perl scope:
 *     the same XS call that locks pushes an unlock onto the caller's save
 *     stack, so a die anywhere after it (a signal handler, a callback) can
 *     never leave the page locked;
 *   - after any call into Perl the stack pointer is re-read (results go out
 *     through ST() and XSRETURN), and the handle is re-checked: Perl code may
 *     have closed the cache, which then croaks instead of using freed memory;
 *   - the handle lives in ext magic, never in a plain IV, so Perl code can
 *     neither forge nor copy it; nothing that Perl code can reach is the
 *     handle's private state;
 *   - croak() is only ever called from C after the engine call returned, never
 *     from inside a Rust frame, and always as croak("%s", msg);
 *   - value bytes returned by fc_read point into the locked page; they are
 *     copied exactly once, straight into the new SV, before returning to Perl;
 *   - everything pushed on the stack is mortal (or a TARG), so nothing leaks
 *     when a later croak unwinds.
 */

#define PERL_NO_GET_CONTEXT
#include "EXTERN.h"
#include "perl.h"
#include "XSUB.h"
#include "ppport.h"

#include "fastmmap.h"

/* What a handle object (in $self->{Cache}) points at, through ext magic on
 * the referenced scalar.  Besides the engine handle it keeps what the Perl
 * layer decided at construction for the one-call fast paths (see
 * fc_set_policy and the FAST PATHS section). */
typedef struct {
    FcCache *c;
    U32 policy;     /* FCX_FAST_* bits: which methods may skip the Perl layer */
    U32 dirty;      /* FC_ISDIRTY in write_back mode, else 0 */
    SV *ser;        /* code refs (owned) or NULL */
    SV *deser;
    SV *comp;
    SV *uncomp;
    HV *gas_opts;   /* get_and_set's options hash, reused when nobody kept it */
    GV *deser_flags; /* Storable's mretrieve: pass $Storable::flags, as thaw does */
    U32 busy;       /* fast paths running Perl code with this handle (see FCX_GUARD) */
    U32 closed;     /* closed while busy: the last guard frees it */
    U32 unlock_on_unwind;  /* a die through the guard must release the page lock */
    U32 lock_gen;   /* bumped by every fc_lock: which lock a scope guard owns */
} FcxHandle;

/* Fast-path policy bits, set by the Perl layer through fc_set_policy. */
#define FCX_FAST_GET    0x01   /* no read_cb */
#define FCX_FAST_SET    0x02   /* no write_cb */
#define FCX_FAST_REMOVE 0x04   /* no delete_cb */
#define FCX_FAST_GAS    0x08   /* get_and_set: no read_cb and no write_cb */
#define FCX_FAST_MSET   0x10   /* multi_set: no write-back callback */
#define FCX_FAST_OTHER  0x20   /* exists, multi_get: nothing to call back */
#define FCX_FAST_GET_HIT 0x40  /* read_cb, no stats: hits here, misses to _get_general */
#define FCX_FAST_SET_WB 0x80   /* write-back write_cb: evicted dirty entries via Perl */

#ifndef G_LIST
#define G_LIST G_ARRAY
#endif

#define FCX_HANDLE_CLASS "Cache::FastMmap::Handle"
#define FCX_CLOSED_MSG "Cache::FastMmap: the cache is closed"

/* Flag bits as U32, whatever integer type the generated header uses. */
#define FCX_HASMODSEQ ((U32)FC_HASMODSEQ)
#define FCX_TOMBSTONE ((U32)FC_TOMBSTONE)
#define FCX_UNDEF     ((U32)FC_UNDEF)
#define FCX_UTF8KEY   ((U32)FC_UTF8KEY)
#define FCX_UTF8VAL   ((U32)FC_UTF8VAL)

/* Bits that fc_read, fc_delete and fc_expunge never show to Perl. */
#define FCX_STRIP_READ \
    (FCX_UTF8KEY | FCX_UTF8VAL | FCX_UNDEF | FCX_HASMODSEQ | FCX_TOMBSTONE)
/* fc_get_keys hides only these two (UTF8VAL and UNDEF stay visible there,
 * exactly as in the reference implementation). */
#define FCX_STRIP_KEYS (FCX_UTF8KEY | FCX_HASMODSEQ)

static void fcx_free(pTHX_ FcxHandle *x);

/* The handle magic on the scalar a handle object references.  Freeing that
 * scalar (the last reference gone) frees the handle. */
static int
fcx_handle_mg_free(pTHX_ SV *sv, MAGIC *mg)
{
    FcxHandle *x = (FcxHandle *)mg->mg_ptr;
    PERL_UNUSED_ARG(sv);
    mg->mg_ptr = NULL;
    if (x)
        fcx_free(aTHX_ x);
    return 0;
}

#ifdef USE_ITHREADS
/* Copies of a lock guard in a new ithread (or a cloned mod_perl interpreter)
 * point nowhere: the lock belongs to the thread that took it. */
static int
fcx_mg_dup_detach(pTHX_ MAGIC *mg, CLONE_PARAMS *param)
{
    PERL_UNUSED_ARG(param);
    mg->mg_ptr = NULL;
    return 0;
}

/* A handle copied into a new interpreter gets a handle of its own: the same
 * open file (a duplicated descriptor, so it works after the process dropped
 * the rights to open it by name, as mod_perl's threaded MPMs do), a mapping,
 * lock state and fork token of its own, and the policy's code refs as the
 * new interpreter's copies.  This runs in the new interpreter while the old
 * one waits (perl_clone), so reading the source handle is safe.  On failure
 * the copy is closed: using it croaks "the cache is closed". */
static int
fcx_handle_mg_dup(pTHX_ MAGIC *mg, CLONE_PARAMS *param)
{
    FcxHandle *src = (FcxHandle *)mg->mg_ptr, *x = NULL;
    FcCache *c;
    mg->mg_ptr = NULL;
    if (src && !src->closed && (c = fc_clone(src->c)) != NULL) {
        Newxz(x, 1, FcxHandle);
        x->c = c;
        x->policy = src->policy;
        x->dirty = src->dirty;
        x->ser = src->ser ? sv_dup_inc(src->ser, param) : NULL;
        x->deser = src->deser ? sv_dup_inc(src->deser, param) : NULL;
        x->comp = src->comp ? sv_dup_inc(src->comp, param) : NULL;
        x->uncomp = src->uncomp ? sv_dup_inc(src->uncomp, param) : NULL;
        x->deser_flags = src->deser_flags ? (GV *)sv_dup((SV *)src->deser_flags, param) : NULL;
    }
    mg->mg_ptr = (char *)x;
    return 0;
}
#define FCX_MG_DUP fcx_mg_dup_detach
#define FCX_HANDLE_MG_DUP fcx_handle_mg_dup
#else
#define FCX_MG_DUP NULL
#define FCX_HANDLE_MG_DUP NULL
#endif

static MGVTBL fcx_handle_vtbl = { NULL, NULL, NULL, NULL, fcx_handle_mg_free, NULL, FCX_HANDLE_MG_DUP, NULL };

/* sv_magicext with the duplication hook armed (see fcx_mg_dup_detach). */
static MAGIC *
fcx_magic_private(pTHX_ SV *sv, MGVTBL *vtbl, void *ptr)
{
    MAGIC *mg = sv_magicext(sv, NULL, PERL_MAGIC_ext, vtbl, (const char *)ptr, 0);
    mg->mg_flags |= MGf_DUP;
    return mg;
}

/* The handle magic of the scalar inner, or NULL. */
static MAGIC *
fcx_handle_mg(pTHX_ SV *inner)
{
    MAGIC *mg;
    if (SvTYPE(inner) < SVt_PVMG)
        return NULL;
    for (mg = SvMAGIC(inner); mg; mg = mg->mg_moremagic)
        if (mg->mg_type == PERL_MAGIC_ext && mg->mg_virtual == &fcx_handle_vtbl)
            return mg;
    return NULL;
}

/* Turn $h into its FcxHandle or croak with the reference's messages. */
static FcxHandle *
fcx_xhandle(pTHX_ SV *obj)
{
    MAGIC *mg;

    if (!SvROK(obj))
        croak("%s", "Object not reference");
    mg = fcx_handle_mg(aTHX_ SvRV(obj));
    if (!mg)
        croak("%s", "Object not initialised correctly");
    if (!mg->mg_ptr)
        croak("%s", FCX_CLOSED_MSG);
    return (FcxHandle *)mg->mg_ptr;
}

/* The engine pointer of $h.  Call it after every argument has been turned
 * into bytes: that may run Perl code, which may close the cache. */
static FcCache *
fcx_handle(pTHX_ SV *obj)
{
    return fcx_xhandle(aTHX_ obj)->c;
}

/* Frees a handle: the engine side and the policy's code refs.  While a fast
 * path is running Perl code with it (a serializer or callback that closes the
 * cache), it is only marked closed and the fast path frees it on the way
 * out. */
static void
fcx_free(pTHX_ FcxHandle *x)
{
    if (x->busy) {
        x->closed = 1;
        return;
    }
    fc_close(x->c);
    SvREFCNT_dec(x->ser);
    SvREFCNT_dec(x->deser);
    SvREFCNT_dec(x->comp);
    SvREFCNT_dec(x->uncomp);
    SvREFCNT_dec((SV *)x->gas_opts);
    Safefree(x);
}

/* Pass on the engine's queued warnings (a repaired page, ...) as Perl
 * warnings -- never while a page lock is held (they stay queued until the
 * lock is released).  All are taken from the engine before the first warn():
 * a __WARN__ handler may close the cache, so the handle is not touched once
 * Perl code can run.  Callers make this their last use of the handle. */
static void
fcx_warnings(pTHX_ FcCache *c)
{
    const char *w;
    SV *first = NULL;
    AV *more = NULL;
    SSize_t i;

    /* None while c holds a page lock: they wait for the unlock. */
    while ((w = fc_take_warning(c)) != NULL) {
        SV *msg = sv_2mortal(newSVpv(w, 0));
        if (!first)
            first = msg;
        else {
            if (!more)
                more = (AV *)sv_2mortal((SV *)newAV());
            av_push(more, SvREFCNT_inc_simple_NN(msg));
        }
    }
    if (!first)
        return;
    warn("%s", SvPV_nolen(first));
    if (more)
        for (i = 0; i <= av_len(more); i++)
            warn("%s", SvPV_nolen(*av_fetch(more, i, 0)));
}

/* Croak with the engine's last error.  Only called after the engine returned. */
static void
fcx_fail(pTHX_ const FcCache *c)
{
    const char *msg = fc_last_error(c);
    croak("%s", (msg && *msg) ? msg : "Unknown error");
}

/* After an engine call that may have queued warnings: pass them on, then
 * croak if the call failed.  The error text is copied first, because a
 * __WARN__ handler may run Perl code that makes another call on the handle. */
static void
fcx_done(pTHX_ FcCache *c, int rc)
{
    SV *err = NULL;
    if (rc != 0) {
        const char *msg = fc_last_error(c);
        err = sv_2mortal(newSVpv((msg && *msg) ? msg : "Unknown error", 0));
    }
    fcx_warnings(aTHX_ c);
    if (err)
        croak("%s", SvPV_nolen(err));
}

#define FCX_CHECK(c, call) STMT_START { \
    if ((call) != 0) fcx_fail(aTHX_ (c)); \
} STMT_END

#define FCX_CHECK_W(c, call) fcx_done(aTHX_ (c), (call))

/* A new SV holding a copy of len bytes at p (p may be NULL when len is 0:
 * newSVpvn(NULL, 0) would give undef, which is not what we want). */
static SV *
fcx_bytes(pTHX_ const uint8_t *p, size_t len, int utf8)
{
    SV *sv = newSVpvn(len ? (const char *)p : "", (STRLEN)len);
    if (utf8)
        SvUTF8_on(sv);
    return sv;
}

/* A stored value as Perl sees it: undef if it was stored as undef. */
static SV *
fcx_value(pTHX_ const uint8_t *p, size_t len, U32 raw_flags)
{
    if (raw_flags & FCX_UNDEF)
        return newSV(0);
    return fcx_bytes(aTHX_ p, len, (raw_flags & FCX_UTF8VAL) ? 1 : 0);
}

/* The hashref for one item of fc_expunge (strip = FCX_STRIP_READ, always with
 * a value) or fc_get_keys modes 1 and 2 (strip = FCX_STRIP_KEYS). */
static SV *
fcx_item_ref(pTHX_ const FcItem *it, int with_value, U32 strip)
{
    HV *hv = newHV();
    SV *rv = newRV_noinc((SV *)hv);   /* owns hv from here on */

    (void)hv_stores(hv, "key",
        fcx_bytes(aTHX_ it->key, it->key_len, (it->flags & FCX_UTF8KEY) ? 1 : 0));
    if (with_value)
        (void)hv_stores(hv, "value", fcx_value(aTHX_ it->val, it->val_len, it->flags));
    (void)hv_stores(hv, "last_access", newSVuv((UV)it->last_access));
    (void)hv_stores(hv, "expire_on", newSVuv((UV)it->expire_on));
    (void)hv_stores(hv, "flags", newSVuv((UV)(it->flags & ~strip)));
    if (it->has_modseq)
        (void)hv_stores(hv, "modseq", newSVuv((UV)it->modseq));
    return rv;
}

/* Read the modseq argument; returns 1 and sets *out if it is defined. */
static int
fcx_modseq(pTHX_ SV *sv, uint64_t *out)
{
    if (!sv)
        return 0;
    SvGETMAGIC(sv);
    if (!SvOK(sv))
        return 0;
#if UVSIZE < 8
    croak("%s", "modseq support requires a 64 bit perl");
#endif
    *out = (uint64_t)SvUV_nomg(sv);
    return 1;
}

/* ------------------------------------------------------------------------
 * SCOPED LOCKS
 *
 * fc_lock_scoped returns a reference to a guard scalar whose free magic
 * releases the page lock it took.  The Perl layer keeps it in a lexical
 * (`my $Lock = fc_lock_scoped(...)`): whichever way the scope is left --
 * return, die from a callback or from a signal handler -- the lexical is
 * freed and the lock released.  It is created before the lock is taken, so
 * there is no moment at which the lock is held and nothing owns it; a die
 * before it reaches the lexical still frees the mortal reference.
 * ---------------------------------------------------------------------- */

typedef struct {
    SV *inner;      /* the handle scalar (counted reference) */
    U32 gen;        /* the handle's lock_gen for the lock this guard owns */
    U32 armed;      /* set in the same C code that took the lock */
} FcxScopeLock;

static int
fcx_scope_mg_free(pTHX_ SV *sv, MAGIC *mg)
{
    FcxScopeLock *s = (FcxScopeLock *)mg->mg_ptr;
    MAGIC *hm;
    FcxHandle *x;
    PERL_UNUSED_ARG(sv);
    if (!s)
        return 0;
    mg->mg_ptr = NULL;
    hm = fcx_handle_mg(aTHX_ s->inner);
    x = hm ? (FcxHandle *)hm->mg_ptr : NULL;
    /* Only the lock this guard took: an explicit fc_unlock, and perhaps a
     * later lock, may have come first.  Warnings stay queued (this may run
     * while a die unwinds); the next call passes them on. */
    if (s->armed && x && x->lock_gen == s->gen && fc_is_locked(x->c))
        fc_unlock(x->c);
    SvREFCNT_dec(s->inner);
    Safefree(s);
    return 0;
}

static MGVTBL fcx_scope_vtbl = { NULL, NULL, NULL, NULL, fcx_scope_mg_free, NULL, FCX_MG_DUP, NULL };

/* ------------------------------------------------------------------------
 * FAST PATHS
 *
 * get, set, exists, remove, get_and_set, multi_get and multi_set are XS
 * methods.  When the cache has no callback that the call could need (the
 * policy bits set by the Perl layer at construction) and the arguments are
 * plain (defined, no magic, not references: turning them into bytes runs no
 * Perl code), each does hash + lock + work + unlock in this one call.
 * Anything else is handed, with the original arguments, to the Perl
 * implementation (_get_general, _set_general, ...), which keeps the full
 * upstream semantics.  Serializers and compressors are called from here,
 * before locking except where upstream runs them under the lock
 * (get_and_set), and then inside the unwind guard.
 * ---------------------------------------------------------------------- */

/* Identifies the magic, attached to each cache object's hash by new()
 * (fc_attach), that points at the object's handle scalar: reaching the
 * handle costs a walk of two one-element magic chains, not a hash lookup. */
static MGVTBL fcx_obj_vtbl;

/* The object's handle, or NULL when anything is unusual (no magic: a copied
 * or half-built object; a closed handle): the general path then reports it
 * the upstream way. */
static FcxHandle *
fcx_self(pTHX_ SV *self)
{
    MAGIC *mg, *hm;
    if (!SvROK(self) || !SvMAGICAL(SvRV(self)))
        return NULL;
    for (mg = SvMAGIC(SvRV(self)); mg; mg = mg->mg_moremagic) {
        if (mg->mg_type == PERL_MAGIC_ext && mg->mg_virtual == &fcx_obj_vtbl) {
            hm = fcx_handle_mg(aTHX_ mg->mg_obj);
            return hm ? (FcxHandle *)hm->mg_ptr : NULL;
        }
    }
    return NULL;
}

/* An argument the fast paths take as it is: SvPV on it runs no Perl code
 * (no get-magic, FETCH or overloading) and cannot warn (defined). */
#define FCX_PLAIN(sv) (!SvGMAGICAL(sv) && !SvROK(sv) && SvOK(sv))

/* Re-dispatch the current XSUB's arguments to a Perl sub of this package and
 * return its results as ours. */
#define FCX_DELEGATE(subname) STMT_START {                                  \
    CV *fcx_cv = get_cv("Cache::FastMmap::" subname, 0);                    \
    I32 fcx_n;                                                              \
    if (!fcx_cv)                                                            \
        croak("%s", "Cache::FastMmap::" subname " is missing");            \
    PL_stack_sp = PL_stack_base + ax + items - 1;                           \
    PUSHMARK(PL_stack_base + ax - 1);                                       \
    fcx_n = call_sv((SV *)fcx_cv, GIMME_V);                                 \
    XSRETURN(fcx_n);                                                        \
} STMT_END

/* Croak with the engine's error after releasing the page lock. */
static void
fcx_fail_unlock(pTHX_ FcCache *c)
{
    const char *msg = fc_last_error(c);
    SV *err = sv_2mortal(newSVpv((msg && *msg) ? msg : "Unknown error", 0));
    fc_unlock(c);
    fcx_warnings(aTHX_ c);
    croak("%s", SvPV_nolen(err));
}

/* FCX_GUARD: while a fast path runs Perl code (serializers, the get_and_set
 * callback, __WARN__ handlers) the handle is marked busy, so a close from
 * that code cannot free it under us, and a die unwinding through the guard
 * releases the page lock when unlock_on_unwind is set.  No G_EVAL is needed,
 * so $@ is untouched on success and errors propagate as they are. */
static void
fcx_guard_end(pTHX_ void *p)
{
    FcxHandle *x = (FcxHandle *)p;
    if (x->unlock_on_unwind) {
        x->unlock_on_unwind = 0;
        fc_unlock(x->c);
    }
    if (--x->busy == 0 && x->closed) {
        x->closed = 0;
        fcx_free(aTHX_ x);
    }
}

#define FCX_GUARD_BEGIN(x) STMT_START {                 \
    ENTER;                                              \
    (x)->busy++;                                        \
    SAVEDESTRUCTOR_X(fcx_guard_end, (void *)(x));       \
} STMT_END
#define FCX_GUARD_END() LEAVE

/* After Perl code ran inside a guard: was the cache closed meanwhile? */
#define FCX_CHECK_OPEN(x) STMT_START {                                  \
    if ((x)->closed)                                                    \
        croak("%s", "Cache::FastMmap: the cache was closed by a callback"); \
} STMT_END

/* Calls code->(arg[, arg2]) in scalar context and returns a mortal copy of
 * the result.  A die propagates (inside a guard when a lock is held).  The
 * caller's own stack pointer is stale afterwards: results go out via ST(). */
static SV *
fcx_call2(pTHX_ SV *code, SV *arg, SV *arg2)
{
    dSP;
    SV *ret;
    I32 n;

    PUSHMARK(SP);
    EXTEND(SP, 2);
    PUSHs(arg);
    if (arg2)
        PUSHs(arg2);
    PUTBACK;
    n = call_sv(code, G_SCALAR);
    SPAGAIN;
    ret = sv_2mortal(n > 0 ? newSVsv(POPs) : newSV(0));
    PUTBACK;
    return ret;
}

#define fcx_call1(code, arg) fcx_call2(aTHX_ (code), (arg), NULL)

/* serialize(\$value) then compress: the bytes to store (mortal or value).
 * The code refs are taken before any call, which may close the cache. */
static SV *
fcx_freeze(pTHX_ FcxHandle *x, SV *value)
{
    SV *ser = x->ser, *comp = x->comp;
    SV *v = value;
    if (ser) {
        v = fcx_call1(ser, sv_2mortal(newRV_inc(value)));
        FCX_CHECK_OPEN(x);
    }
    if (comp) {
        v = fcx_call1(comp, v);
        FCX_CHECK_OPEN(x);
    }
    return v;
}

/* Reverse of fcx_freeze for a defined stored value (mortal). */
static SV *
fcx_thaw(pTHX_ FcxHandle *x, SV *stored)
{
    SV *deser = x->deser, *uncomp = x->uncomp;
    SV *v = stored;
    if (uncomp) {
        v = fcx_call1(uncomp, v);
        FCX_CHECK_OPEN(x);
    }
    if (deser) {
        v = fcx_call2(aTHX_ deser, v, x->deser_flags ? GvSV(x->deser_flags) : NULL);
        FCX_CHECK_OPEN(x);
        if (!SvROK(v) || SvTYPE(SvRV(v)) >= SVt_PVAV)
            croak("%s", "Not a SCALAR reference");
        v = sv_2mortal(newSVsv(SvRV(v)));
    }
    return v;
}

/* The bytes of a value about to be stored, taken before locking (get-magic,
 * FETCH and overloading run here; inside a guard, as they may close the
 * cache).  Returns the SV whose PV is to be stored, or NULL for undef, and
 * adds FC_UTF8VAL to *flags when needed.  A reference or magical value is
 * stringified into a private copy, so no later Perl code can change it. */
static SV *
fcx_value_bytes(pTHX_ SV *v, U32 *flags)
{
    STRLEN len;
    const char *pv;
    SvGETMAGIC(v);
    if (!SvOK(v))
        return NULL;
    if (SvROK(v) || SvMAGICAL(v)) {
        pv = SvPV_nomg(v, len);
        v = sv_2mortal(newSVpvn_flags(pv, len, SvUTF8(v) ? SVf_UTF8 : 0));
    }
    if (SvUTF8(v))
        *flags |= FCX_UTF8VAL;
    return v;
}

/* parse_expire_time($spec, $base) for a plain scalar (SPEC 1.3). */
static U32
fcx_expire_on(pTHX_ SV *spec, U32 base)
{
    STRLEN len, i = 0;
    const char *s;
    UV n = 0, unit = 1;
    int digits = 0;

    if (!SvTRUE_nomg(spec))
        return base;                    /* '' / 0 / undef: offset 0 */
    s = SvPV_nomg(spec, len);
    if (len == 5 && memEQ(s, "never", 5))
        return 0;
    if (len == 3 && memEQ(s, "now", 3))
        return base;
    while (i < len && s[i] >= '0' && s[i] <= '9') {
        n = n * 10 + (UV)(s[i] - '0');
        if (n > 0xFFFFFFFFUL)
            n = 0xFFFFFFFFUL;
        i++;
        digits = 1;
    }
    if (!digits)
        return base;
    while (i < len && isSPACE(s[i]))
        i++;
    if (i < len) {
        switch (s[i] | 0x20) {
        case 'm': unit = 60; break;
        case 'h': unit = 3600; break;
        case 'd': unit = 86400; break;
        case 'w': unit = 604800; break;
        default: unit = 1; break;
        }
    }
    return (U32)(n * unit + base);
}

/* Dirty entries handed to Perl's _write_back_dirty per call.  The batch an
 * expunge evicts can hold a page's worth of entries (hundreds); made into
 * Perl values all at once it would grow the process by the SVs of the
 * largest batch ever seen (Perl keeps SV memory for reuse).  In chunks the
 * SVs of one chunk are alive at a time, and the next chunk reuses them. */
#define FCX_WB_CHUNK 32

/* Hands the n entries of the handle's last fc_expunge batch (taken with wb
 * mode 2: dirty entries only) to $self->_write_back_dirty, FCX_WB_CHUNK at a
 * time, each chunk a flat (key, value, expire_on) list.  Each chunk's values
 * are copied from fc_item after the previous chunk's Perl code ran: no
 * pointer into the engine's buffer is kept across a call into Perl.  A batch
 * that is gone meanwhile (Perl code expunged through the same handle) ends
 * the loop.  The caller holds the page lock and is inside a guard of x; a
 * die from Perl (the deserializer: write_cb's own are swallowed there)
 * propagates, and the rest of the batch is not written back, as upstream. */
static void
fcx_write_back(pTHX_ FcxHandle *x, SV *self, size_t n)
{
    size_t i = 0, j;
    FcItem it;
    AV *chunk;
    SV *ref;

    if (!n)
        return;
    chunk = newAV();
    ref = sv_2mortal(newRV_noinc((SV *)chunk));   /* owns chunk */
    av_extend(chunk, 3 * FCX_WB_CHUNK - 1);
    while (i < n) {
        for (j = 0; j < FCX_WB_CHUNK && i < n; j++, i++) {
            if (fc_item(x->c, i, &it) != 0) {
                n = i;
                break;
            }
            av_push(chunk, fcx_bytes(aTHX_ it.key, it.key_len, (it.flags & FCX_UTF8KEY) ? 1 : 0));
            av_push(chunk, fcx_value(aTHX_ it.val, it.val_len, it.flags));
            av_push(chunk, newSVuv((UV)it.expire_on));
        }
        if (av_len(chunk) < 0)
            break;
        {
            dSP;
            PUSHMARK(SP);
            EXTEND(SP, 2);
            PUSHs(self);
            PUSHs(ref);
            PUTBACK;
            (void)call_pv("Cache::FastMmap::_write_back_dirty", G_VOID | G_DISCARD);
        }
        FCX_CHECK_OPEN(x);
        av_clear(chunk);
    }
}

/* Makes room in the locked page for len more bytes, as upstream's set does.
 * With wb_self (a write-back cache's object, with a write_cb), the dirty
 * entries it evicts go to the Perl layer's write_cb while the page is
 * locked, as upstream; the caller is inside a guard with unlock_on_unwind
 * set.  Without it no Perl code runs (and the engine copies nothing out).
 * Croaks (unlocking) on an engine error. */
static void
fcx_make_room(pTHX_ FcxHandle *x, SV *wb_self, int64_t len)
{
    size_t n = 0;

    if (fc_expunge(x->c, 2, wb_self ? 2 : 0, len, &n) != 0)
        fcx_fail_unlock(aTHX_ x->c);
    if (wb_self)
        fcx_write_back(aTHX_ x, wb_self, n);
}

/* Stores key => value bytes in the locked page, making room first (see
 * fcx_make_room for wb_self).  bytes is what fcx_value_bytes returned (NULL:
 * undef).  Returns the engine's 1/0/-1; croaks (unlocking) on an engine
 * error. */
static int32_t
fcx_store_wb(pTHX_ FcxHandle *x, SV *wb_self, const char *k, STRLEN klen, int kutf8,
             uint32_t slot, SV *bytes, U32 expire_on, U32 flags)
{
    STRLEN vlen = 0;
    const char *v = "";
    int32_t result = 0;

    if (bytes) {
        v = SvPV_nomg(bytes, vlen);
        if (kutf8)
            flags |= FCX_UTF8KEY;
    }
    else {
        /* Like the reference: undef is not recorded with the key's flag. */
        flags = (flags & ~FCX_UTF8VAL) | FCX_UNDEF;
    }
    if (!wb_self) {
        /* Nobody to tell about evictions: room and store in one call. */
        if (fc_store(x->c, slot, (const uint8_t *)k, klen, (const uint8_t *)v, vlen, expire_on,
                     flags, &result) != 0)
            fcx_fail_unlock(aTHX_ x->c);
        return result;
    }
    fcx_make_room(aTHX_ x, wb_self, (int64_t)(klen + vlen));
    /* The PV is taken only now: write_cb above may have run Perl code, and
     * bytes is a private copy or a plain value no Perl code was given. */
    if (bytes)
        v = SvPV_nomg(bytes, vlen);
    if (fc_write(x->c, slot, (const uint8_t *)k, klen, (const uint8_t *)v, vlen,
                 expire_on, flags, 0, 0, &result) != 0)
        fcx_fail_unlock(aTHX_ x->c);
    return result;
}

#define fcx_store(x, k, klen, kutf8, slot, bytes, expire_on, flags) \
    fcx_store_wb(aTHX_ (x), NULL, (k), (klen), (kutf8), (slot), (bytes), (expire_on), (flags))

/* Looks key up in the locked page: a mortal copy of the stored value (not
 * thawed), or NULL on a miss.  Croaks (unlocking) on an engine error. */
static SV *
fcx_lookup(pTHX_ FcxHandle *x, uint32_t slot, const char *k, STRLEN klen, FcReadResult *r)
{
    if (fc_read(x->c, slot, (const uint8_t *)k, klen, r) != 0)
        fcx_fail_unlock(aTHX_ x->c);
    if (!r->found)
        return NULL;
    return sv_2mortal(fcx_value(aTHX_ r->val, r->val_len, r->flags));
}

/* Keys multi_get looks up without the lock per engine call. */
#define FCX_PEEK_BATCH 16

/* multi_get/multi_set's "$PageKey-$Key" as the Perl layer builds it under
 * "use bytes": the raw bytes of both, never flagged UTF-8 (mortal).  key is
 * plain (a hash key, or checked with FCX_PLAIN). */
static SV *
fcx_multi_key(pTHX_ const char *p, STRLEN plen, SV *key)
{
    STRLEN klen;
    const char *k = SvPV_nomg(key, klen);
    SV *full = sv_2mortal(newSV(plen + klen + 2));
    sv_setpvn(full, p, plen);
    sv_catpvn_nomg(full, "-", 1);
    sv_catpvn_nomg(full, k, klen);
    return full;
}

/* The same "$PageKey-$Key" into full, which holds "$PageKey-" (plen bytes
 * before the '-'): reused key after key, no new SV.  Returns its bytes, with
 * their length and slot hash. */
static const char *
fcx_multi_key_into(pTHX_ FcxHandle *x, SV *full, STRLEN plen, SV *key, STRLEN *klen,
                   uint32_t *slot)
{
    STRLEN kl;
    const char *kp = SvPV_nomg(key, kl), *k;
    SvCUR_set(full, plen + 1);
    sv_catpvn_nomg(full, kp, kl);
    k = SvPV_nomg(full, *klen);
    fc_hash(x->c, (const uint8_t *)k, *klen, NULL, slot);
    return k;
}

/* Sets hv->{key} to v when want, else deletes it, reusing the value SV.
 * Returns 0 when the existing value cannot simply be overwritten. */
static int
fcx_opt_set(pTHX_ HV *hv, const char *key, I32 klen, U32 hash, int want, UV v)
{
    SV **svp = (SV **)hv_common_key_len(hv, key, klen, HV_FETCH_JUST_SV, NULL, hash);
    if (!want) {
        if (svp)
            (void)hv_common_key_len(hv, key, klen, HV_DELETE | G_DISCARD, NULL, hash);
        return 1;
    }
    if (!svp) {
        (void)hv_common_key_len(hv, key, klen, HV_FETCH_ISSTORE, newSVuv(v), hash);
        return 1;
    }
    if (SvREADONLY(*svp) || SvMAGICAL(*svp) || SvROK(*svp) || SvREFCNT(*svp) != 1)
        return 0;
    sv_setuv(*svp, v);
    return 1;
}

static U32 fcx_hash_expire_on, fcx_hash_modseq;   /* computed at BOOT */

/* Refills get_and_set's reused options hash in place: {expire_on} when the
 * key was found, {modseq} when it has one, nothing else.  Returns 0 when the
 * hash has to be rebuilt instead (the callback added keys, or kept a value). */
static int
fcx_opts_update(pTHX_ HV *opts, const FcReadResult *r)
{
    if (HvUSEDKEYS(opts) > 2)
        return 0;
    if (!fcx_opt_set(aTHX_ opts, "expire_on", 9, fcx_hash_expire_on, r->found, (UV)r->expire_on)
        || !fcx_opt_set(aTHX_ opts, "modseq", 6, fcx_hash_modseq, r->has_modseq, (UV)r->modseq))
        return 0;
    return HvUSEDKEYS(opts) == (STRLEN)((r->found ? 1 : 0) + (r->has_modseq ? 1 : 0));
}

/* Hashes and locks the page of key; croaks on a lock error (nothing held).
 * Warnings the lock queued (a repaired page) wait for the unlock. */
static uint32_t
fcx_lock_key(pTHX_ FcxHandle *x, const char *k, STRLEN klen)
{
    uint32_t page = 0, slot = 0;
    fc_hash(x->c, (const uint8_t *)k, klen, &page, &slot);
    if (fc_lock(x->c, page) != 0)
        fcx_done(aTHX_ x->c, -1);
    return slot;
}

/* Raw value bytes of a hit into TARG-like sv (no new SV head). */
static void
fcx_set_raw(pTHX_ SV *sv, const FcReadResult *r)
{
    STRLEN len = (STRLEN)r->val_len;
    /* The pad target of the last call, a plain string with room: copy in
     * place (what sv_setpvn does, without its general checks). */
    if (SvTYPE(sv) >= SVt_PV && !SvTHINKFIRST(sv) && !SvOOK(sv) && SvLEN(sv) > len) {
        char *pv = SvPVX(sv);
        if (len)
            Copy(r->val, pv, len, char);
        pv[len] = '\0';
        SvCUR_set(sv, len);
        (void)SvPOK_only(sv);
    }
    else
        sv_setpvn(sv, len ? (const char *)r->val : "", len);
    SvTAINT(sv);
    if (r->flags & FCX_UTF8VAL)
        SvUTF8_on(sv);
    else
        SvUTF8_off(sv);
}

MODULE = Cache::FastMmap        PACKAGE = Cache::FastMmap

PROTOTYPES: ENABLE

BOOT:
    /* A caught engine panic reaches the user as a croak; keep stderr quiet. */
    fc_library_init();
    PERL_HASH(fcx_hash_expire_on, "expire_on", 9);
    PERL_HASH(fcx_hash_modseq, "modseq", 6);

SV *
fc_new()
  PREINIT:
    FcxHandle *x;
    SV *inner;
  CODE:
    Newxz(x, 1, FcxHandle);
    x->c = fc_new();
    if (!x->c) {
        Safefree(x);
        croak("%s", "Cache::FastMmap: out of memory creating the cache handle");
    }
    /* The IV only tells the Perl layer open (1) from closed (0); the
     * pointer is in the magic, where Perl code cannot reach it. */
    inner = newSViv(1);
    fcx_magic_private(aTHX_ inner, &fcx_handle_vtbl, x);
    RETVAL = sv_bless(newRV_noinc(inner), gv_stashpv(FCX_HANDLE_CLASS, GV_ADD));
  OUTPUT:
    RETVAL

void
fc_set_param(obj, name, value)
    SV *obj
    SV *name
    SV *value
  PREINIT:
    STRLEN nlen, vlen;
    const char *n, *v;
    FcCache *h;
  CODE:
    n = SvPV(name, nlen);
    v = SvPV(value, vlen);
    h = fcx_handle(aTHX_ obj);
    FCX_CHECK(h, fc_set_param(h, (const uint8_t *)n, nlen, (const uint8_t *)v, vlen));

void
fc_init(obj)
    SV *obj
  PREINIT:
    FcCache *h;
  CODE:
    h = fcx_handle(aTHX_ obj);
    FCX_CHECK_W(h, fc_init(h));

void
fc_close(obj)
    SV *obj
  PREINIT:
    MAGIC *mg;
    FcxHandle *x;
  CODE:
    x = fcx_xhandle(aTHX_ obj);
    /* Detach first: any later use croaks instead of touching freed memory. */
    mg = fcx_handle_mg(aTHX_ SvRV(obj));
    mg->mg_ptr = NULL;
    sv_setiv(SvRV(obj), 0);
    fcx_free(aTHX_ x);

IV
fc_is_open(obj)
    SV *obj
  PREINIT:
    MAGIC *mg;
  CODE:
    mg = SvROK(obj) ? fcx_handle_mg(aTHX_ SvRV(obj)) : NULL;
    RETVAL = (mg && mg->mg_ptr) ? 1 : 0;
  OUTPUT:
    RETVAL

void
fc_hash(obj, key)
    SV *obj
    SV *key
  PREINIT:
    STRLEN klen;
    const char *k;
    uint32_t page = 0, slot_hash = 0;
    FcCache *h;
  PPCODE:
    k = SvPV(key, klen);
    h = fcx_handle(aTHX_ obj);
    fc_hash(h, (const uint8_t *)k, klen, &page, &slot_hash);
    EXTEND(SP, 2);
    mPUSHu((UV)page);
    mPUSHu((UV)slot_hash);

void
fc_lock(obj, page)
    SV *obj
    U32 page
  PREINIT:
    FcxHandle *x;
  CODE:
    x = fcx_xhandle(aTHX_ obj);
    FCX_CHECK_W(x->c, fc_lock(x->c, (uint32_t)page));
    x->lock_gen++;

void
fc_lock_scoped(obj, page)
    SV *obj
    U32 page
  PREINIT:
    FcxHandle *x;
    FcxScopeLock *s;
    SV *guard, *ref;
  PPCODE:
    /* See SCOPED LOCKS.  The guard exists (mortal) before the lock does. */
    x = fcx_xhandle(aTHX_ obj);
    guard = newSV(0);
    ref = sv_2mortal(newRV_noinc(guard));
    Newxz(s, 1, FcxScopeLock);
    s->inner = SvREFCNT_inc_simple_NN(SvRV(obj));
    fcx_magic_private(aTHX_ guard, &fcx_scope_vtbl, s);
    if (fc_lock(x->c, (uint32_t)page) != 0)
        fcx_done(aTHX_ x->c, -1);
    s->gen = ++x->lock_gen;
    s->armed = 1;
    ST(0) = ref;
    XSRETURN(1);

void
fc_unlock(obj)
    SV *obj
  PREINIT:
    FcCache *h;
  CODE:
    h = fcx_handle(aTHX_ obj);
    fc_unlock(h);
    /* Warnings queued under the lock (a repaired page): now, and last. */
    fcx_warnings(aTHX_ h);

IV
fc_is_locked(obj)
    SV *obj
  CODE:
    RETVAL = fc_is_locked(fcx_handle(aTHX_ obj)) ? 1 : 0;
  OUTPUT:
    RETVAL

void
fc_read(obj, slot, key)
    SV *obj
    U32 slot
    SV *key
  PREINIT:
    STRLEN klen;
    const char *k;
    FcReadResult r;
    SV *val;
    int rc;
    FcCache *h;
  PPCODE:
    k = SvPV(key, klen);
    h = fcx_handle(aTHX_ obj);
    Zero(&r, 1, FcReadResult);
    rc = fc_read(h, (uint32_t)slot, (const uint8_t *)k, klen, &r);
    if (rc != 0)
        fcx_done(aTHX_ h, rc);
    /* r.val points into the locked page: copy it now, once. */
    if (r.found)
        val = sv_2mortal(fcx_value(aTHX_ r.val, r.val_len, r.flags));
    else
        val = &PL_sv_undef;
    EXTEND(SP, 5);
    PUSHs(val);
    mPUSHu((UV)(r.flags & ~FCX_STRIP_READ));
    mPUSHi(r.found ? 1 : 0);
    mPUSHu((UV)r.expire_on);
    if (r.has_modseq)
        mPUSHu((UV)r.modseq);
    else
        PUSHs(&PL_sv_undef);
    fcx_warnings(aTHX_ h);   /* only if not locked: normally a no-op */

IV
fc_write(obj, slot, key, val, expire_on, flags, modseq = NULL)
    SV *obj
    U32 slot
    SV *key
    SV *val
    U32 expire_on
    U32 flags
    SV *modseq
  PREINIT:
    STRLEN klen, vlen;
    const char *k, *v;
    uint64_t ms = 0;
    int has_ms;
    int32_t stored = 0;
    FcCache *h;
    SV *bytes;
  CODE:
    /* Every argument into bytes first; only then the handle. */
    k = SvPV(key, klen);
    bytes = fcx_value_bytes(aTHX_ val, &flags);
    has_ms = fcx_modseq(aTHX_ modseq, &ms);
    h = fcx_handle(aTHX_ obj);
    if (!bytes) {
        /* undef is stored as an empty value marked FC_UNDEF; like the
         * reference, the key's UTF-8 flag is not recorded in this case. */
        v = "";
        vlen = 0;
        flags |= FCX_UNDEF;
    }
    else {
        v = SvPV_nomg(bytes, vlen);
        if (SvUTF8(key))
            flags |= FCX_UTF8KEY;
    }
    FCX_CHECK_W(h, fc_write(h, (uint32_t)slot, (const uint8_t *)k, klen,
                          (const uint8_t *)v, vlen, (uint32_t)expire_on,
                          (uint32_t)flags, has_ms, ms, &stored));
    RETVAL = (IV)stored;
  OUTPUT:
    RETVAL

IV
fc_tombstone(obj, slot, key, expire_on, modseq)
    SV *obj
    U32 slot
    SV *key
    U32 expire_on
    SV *modseq
  PREINIT:
    STRLEN klen;
    const char *k;
    uint64_t ms = 0;
    int32_t stored = 0;
    FcCache *h;
  CODE:
    k = SvPV(key, klen);
    if (!fcx_modseq(aTHX_ modseq, &ms))
        croak("%s", "fc_tombstone requires a modseq");
    h = fcx_handle(aTHX_ obj);
    FCX_CHECK_W(h, fc_tombstone(h, (uint32_t)slot, (const uint8_t *)k, klen,
                              (uint32_t)expire_on, SvUTF8(key) ? FCX_UTF8KEY : 0,
                              ms, &stored));
    RETVAL = (IV)stored;
  OUTPUT:
    RETVAL

void
fc_delete(obj, slot, key)
    SV *obj
    U32 slot
    SV *key
  PREINIT:
    STRLEN klen;
    const char *k;
    int32_t did = 0;
    uint32_t fl = 0;
    FcCache *h;
  PPCODE:
    k = SvPV(key, klen);
    h = fcx_handle(aTHX_ obj);
    FCX_CHECK_W(h, fc_delete(h, (uint32_t)slot, (const uint8_t *)k, klen, &did, &fl));
    EXTEND(SP, 2);
    mPUSHi(did ? 1 : 0);
    mPUSHu(did ? (UV)(fl & ~FCX_STRIP_READ) : 0);

void
fc_expunge(obj, mode, wb, len, self = NULL)
    SV *obj
    IV mode
    IV wb
    IV len
    SV *self
  PREINIT:
    size_t n = 0, i;
    FcItem it;
    int rc;
    FcxHandle *x;
    FcCache *h;
  PPCODE:
    /* wb 2 is the Perl layer's write-back: the engine keeps only the dirty
     * entries, and they go to $self->_write_back_dirty in chunks (see
     * fcx_write_back) while the caller's scoped lock holds the page.  It
     * returns nothing. */
    if (wb == 2 && !self)
        croak("%s", "fc_expunge: write-back (wb 2) needs the cache object");
    x = fcx_xhandle(aTHX_ obj);
    h = x->c;
    rc = fc_expunge(h, (int32_t)mode, (int32_t)(wb == 2 ? 2 : wb ? 1 : 0), (int64_t)len, &n);
    if (rc != 0)
        fcx_done(aTHX_ h, rc);
    if (wb == 2) {
        FCX_GUARD_BEGIN(x);
        fcx_write_back(aTHX_ x, self, n);
        FCX_GUARD_END();
    }
    else if (wb && n) {
        EXTEND(SP, (SSize_t)n);
        for (i = 0; i < n; i++) {
            FCX_CHECK(h, fc_item(h, i, &it));
            if (it.flags & FCX_TOMBSTONE)
                continue;
            PUSHs(sv_2mortal(fcx_item_ref(aTHX_ &it, 1, FCX_STRIP_READ)));
        }
    }
    fcx_warnings(aTHX_ h);   /* only if not locked: normally a no-op */

void
fc_get_keys(obj, mode)
    SV *obj
    IV mode
  PREINIT:
    size_t n = 0, i;
    FcItem it;
    int rc;
    FcCache *h;
  PPCODE:
    h = fcx_handle(aTHX_ obj);
    if (mode >= 0 && mode <= 2) {
        rc = fc_collect_keys(h, mode == 2 ? 1 : 0, &n);
        if (rc != 0)
            fcx_done(aTHX_ h, rc);
        EXTEND(SP, (SSize_t)n);
        for (i = 0; i < n; i++) {
            FCX_CHECK(h, fc_item(h, i, &it));
            if (mode == 0)
                PUSHs(sv_2mortal(fcx_bytes(aTHX_ it.key, it.key_len,
                                           (it.flags & FCX_UTF8KEY) ? 1 : 0)));
            else
                PUSHs(sv_2mortal(fcx_item_ref(aTHX_ &it, mode == 2, FCX_STRIP_KEYS)));
        }
        /* Last: the results are already on the stack when Perl code runs. */
        fcx_warnings(aTHX_ h);
    }

void
fc_get_page_details(obj)
    SV *obj
  PREINIT:
    uint32_t nreads = 0, nreadhits = 0;
    FcCache *h;
  PPCODE:
    h = fcx_handle(aTHX_ obj);
    FCX_CHECK(h, fc_get_page_details(h, &nreads, &nreadhits));
    EXTEND(SP, 2);
    mPUSHu((UV)nreads);
    mPUSHu((UV)nreadhits);

void
fc_reset_page_details(obj)
    SV *obj
  PREINIT:
    FcCache *h;
  CODE:
    h = fcx_handle(aTHX_ obj);
    FCX_CHECK(h, fc_reset_page_details(h));

void
fc_set_time_override(t)
    UV t
  CODE:
    fc_set_time_override((uint32_t)t);

const char *
_lock_backend()
  CODE:
    RETVAL = fc_lock_backend();
  OUTPUT:
    RETVAL

UV
fc_repaired_pages(obj)
    SV *obj
  CODE:
    RETVAL = (UV)fc_repaired_pages(fcx_handle(aTHX_ obj));
  OUTPUT:
    RETVAL


MODULE = Cache::FastMmap        PACKAGE = Cache::FastMmap

PROTOTYPES: DISABLE

void
fc_set_storable_flags(h)
    SV *h
  PREINIT:
    FcxHandle *x;
  CODE:
    /* The deserializer is Storable's mretrieve: give it $Storable::flags
     * (read at each call, so a local() change is honoured), as thaw does. */
    x = fcx_xhandle(aTHX_ h);
    x->deser_flags = gv_fetchpvs("Storable::flags", GV_ADD, SVt_PV);

void
fc_set_policy(h, policy, dirty, ser, deser, comp, uncomp)
    SV *h
    U32 policy
    U32 dirty
    SV *ser
    SV *deser
    SV *comp
    SV *uncomp
  PREINIT:
    FcxHandle *x;
  CODE:
    /* Called once by new(): which methods may take the fast path, and the
     * serializer/compressor code refs they call (undef for none). */
    x = fcx_xhandle(aTHX_ h);
    x->policy = policy;
    x->dirty = dirty ? (U32)FC_ISDIRTY : 0;
#define FCX_KEEP(slot, sv) STMT_START { \
        SvREFCNT_dec(x->slot); \
        x->slot = SvOK(sv) ? newSVsv(sv) : NULL; \
    } STMT_END
    FCX_KEEP(ser, ser);
    FCX_KEEP(deser, deser);
    FCX_KEEP(comp, comp);
    FCX_KEEP(uncomp, uncomp);
#undef FCX_KEEP

void
fc_attach(self, h)
    SV *self
    SV *h
  CODE:
    /* Lets the fast paths find $self's handle (see fcx_self); the magic holds
     * a reference to the handle scalar, whose magic fc_close detaches.  A
     * previous attachment (an object cloned into a new thread, which gets a
     * handle of its own) is replaced. */
    (void)fcx_xhandle(aTHX_ h);
    if (!SvROK(self) || SvTYPE(SvRV(self)) != SVt_PVHV)
        croak("%s", "fc_attach: not a cache object");
    sv_unmagicext(SvRV(self), PERL_MAGIC_ext, &fcx_obj_vtbl);
    sv_magicext(SvRV(self), SvRV(h), PERL_MAGIC_ext, &fcx_obj_vtbl, NULL, 0);

void
get(self, ...)
    SV *self
  PREINIT:
    int miss_to_perl;
    SV *key;
    FcxHandle *x;
    STRLEN klen;
    const char *k;
    uint32_t page = 0, slot = 0, ticket = 0;
    FcReadResult r;
    SV *val = NULL;
  PPCODE:
    x = fcx_self(aTHX_ self);
    if (items != 2 || !x || !(x->policy & (FCX_FAST_GET | FCX_FAST_GET_HIT)) || !FCX_PLAIN(ST(1)))
        FCX_DELEGATE("_get_general");
    /* With a read_cb only hits are served here: a miss (which calls read_cb
     * under the lock and stores its result) is the Perl layer's, which looks
     * again under the lock. */
    miss_to_perl = !(x->policy & FCX_FAST_GET);
    key = ST(1);
    k = SvPV_nomg(key, klen);
    /* First without the lock (a sequence-lock read): the copy is kept only if
     * the page did not change meanwhile, else we lock and read again. */
    if (fc_peek(x->c, (const uint8_t *)k, klen, &page, &slot, &r, &ticket)) {
        if (!r.found && miss_to_perl) {
            if (fc_peek_confirm(x->c, page, ticket))
                FCX_DELEGATE("_get_general");
        }
        else if (!r.found || (r.flags & FCX_UNDEF))
            val = &PL_sv_undef;
        else if (!x->uncomp && !x->deser) {
            dXSTARG;
            fcx_set_raw(aTHX_ TARG, &r);
            val = TARG;
        }
        else
            val = sv_2mortal(fcx_value(aTHX_ r.val, r.val_len, r.flags));
        if ((r.found || !miss_to_perl) && fc_peek_confirm(x->c, page, ticket)) {
            if (SvOK(val) && (x->uncomp || x->deser)) {
                FCX_GUARD_BEGIN(x);
                val = fcx_thaw(aTHX_ x, val);
                FCX_GUARD_END();
            }
            ST(0) = val;
            XSRETURN(1);
        }
    }
    if (fc_lock(x->c, page) != 0)
        fcx_done(aTHX_ x->c, -1);
    if (!x->uncomp && !x->deser) {
        /* Raw values: copied once, from the page into our pad target (no new
         * SV head, and its buffer is reused from call to call). */
        dXSTARG;
        if (fc_read(x->c, slot, (const uint8_t *)k, klen, &r) != 0)
            fcx_fail_unlock(aTHX_ x->c);
        if (!r.found && miss_to_perl) {
            fc_unlock(x->c);
            fcx_warnings(aTHX_ x->c);
            FCX_DELEGATE("_get_general");
        }
        if (r.found && !(r.flags & FCX_UNDEF)) {
            fcx_set_raw(aTHX_ TARG, &r);
            val = TARG;
        }
        else {
            val = &PL_sv_undef;
        }
        fc_unlock(x->c);
        fcx_warnings(aTHX_ x->c);
        ST(0) = val;
        XSRETURN(1);
    }
    val = fcx_lookup(aTHX_ x, slot, k, klen, &r);
    fc_unlock(x->c);
    if (!val && miss_to_perl) {
        fcx_warnings(aTHX_ x->c);
        FCX_DELEGATE("_get_general");
    }
    FCX_GUARD_BEGIN(x);
    fcx_warnings(aTHX_ x->c);
    if (val && SvOK(val)) {
        FCX_CHECK_OPEN(x);
        val = fcx_thaw(aTHX_ x, val);
    }
    FCX_GUARD_END();
    ST(0) = val ? val : &PL_sv_undef;
    XSRETURN(1);

void
exists(self, ...)
    SV *self
  PREINIT:
    SV *key;
    FcxHandle *x;
    STRLEN klen;
    const char *k;
    uint32_t page = 0, slot = 0, ticket = 0;
    FcReadResult r;
  PPCODE:
    x = fcx_self(aTHX_ self);
    if (items != 2 || !x || !(x->policy & FCX_FAST_OTHER) || !FCX_PLAIN(ST(1)))
        FCX_DELEGATE("_exists_general");
    key = ST(1);
    k = SvPV_nomg(key, klen);
    if (fc_peek(x->c, (const uint8_t *)k, klen, &page, &slot, &r, &ticket)
        && fc_peek_confirm(x->c, page, ticket)) {
        dXSTARG;
        sv_setiv(TARG, r.found ? 1 : 0);
        ST(0) = TARG;
        XSRETURN(1);
    }
    if (fc_lock(x->c, page) != 0)
        fcx_done(aTHX_ x->c, -1);
    if (fc_read(x->c, slot, (const uint8_t *)k, klen, &r) != 0)
        fcx_fail_unlock(aTHX_ x->c);
    fc_unlock(x->c);
    fcx_warnings(aTHX_ x->c);
    ST(0) = sv_2mortal(newSViv(r.found ? 1 : 0));
    XSRETURN(1);

void
set(self, ...)
    SV *self
  PREINIT:
    SV *key, *wb_self;
    FcxHandle *x;
    STRLEN klen;
    const char *k;
    uint32_t slot;
    U32 expire_on = 0xFFFFFFFFU, flags;
    SV *stored;
    int32_t result;
    int rc;
  PPCODE:
    x = fcx_self(aTHX_ self);
    if (items < 3 || items > 4 || !x || !(x->policy & (FCX_FAST_SET | FCX_FAST_SET_WB))
        || !FCX_PLAIN(ST(1)) || (items == 4 && (SvGMAGICAL(ST(3)) || SvROK(ST(3)))))
        FCX_DELEGATE("_set_general");
    /* A write-back cache's write_cb is needed only for the dirty entries
     * the store evicts, and when the value does not fit. */
    wb_self = (x->policy & FCX_FAST_SET) ? NULL : self;
    key = ST(1);
    if (items == 4 && SvOK(ST(3)))
        expire_on = fcx_expire_on(aTHX_ ST(3), fc_now());
    if (!wb_self && !x->ser && !x->comp && FCX_PLAIN(ST(2))) {
        /* A plain raw value and no callback: both turn into bytes here, and
         * fc_set locks, makes room, stores and unlocks in one call (no Perl
         * code runs meanwhile, so no guard is needed). */
        dXSTARG;
        STRLEN vlen;
        const char *v = SvPV_nomg(ST(2), vlen);
        flags = x->dirty | (SvUTF8(ST(2)) ? FCX_UTF8VAL : 0) | (SvUTF8(key) ? FCX_UTF8KEY : 0);
        k = SvPV_nomg(key, klen);
        result = 0;
        rc = fc_set(x->c, (const uint8_t *)k, klen, (const uint8_t *)v, vlen, expire_on, flags,
                    &result);
        if (rc)    /* warnings queued, or an error */
            fcx_done(aTHX_ x->c, rc < 0 ? -1 : 0);
        sv_setiv(TARG, result == 1 ? 1 : 0);
        ST(0) = TARG;
        XSRETURN(1);
    }
    FCX_GUARD_BEGIN(x);
    /* The value into bytes before locking: serializer, compressor, FETCH and
     * overloading run now, and a die from them holds no lock. */
    stored = (x->ser || x->comp) ? fcx_freeze(aTHX_ x, ST(2)) : ST(2);
    flags = x->dirty;
    stored = fcx_value_bytes(aTHX_ stored, &flags);
    FCX_CHECK_OPEN(x);
    k = SvPV_nomg(key, klen);
    slot = fcx_lock_key(aTHX_ x, k, klen);
    x->unlock_on_unwind = 1;
    result = fcx_store_wb(aTHX_ x, wb_self, k, klen, SvUTF8(key) ? 1 : 0, slot, stored,
                          expire_on, flags);
    x->unlock_on_unwind = 0;
    fc_unlock(x->c);
    fcx_warnings(aTHX_ x->c);
    if (wb_self && result == 0) {
        /* Did not fit: write_cb gets it now, outside the lock, as upstream. */
        dSP;
        PUSHMARK(SP);
        EXTEND(SP, 5);
        PUSHs(self);
        PUSHs(key);
        PUSHs(sv_2mortal(newRV_inc(ST(2))));
        mPUSHi(expire_on == 0xFFFFFFFFU ? -1 : (IV)expire_on);
        mPUSHi(result);
        PUTBACK;
        (void)call_pv("Cache::FastMmap::_after_store", G_VOID | G_DISCARD);
    }
    FCX_GUARD_END();
    ST(0) = sv_2mortal(newSViv(result == 1 ? 1 : 0));
    XSRETURN(1);

void
remove(self, ...)
    SV *self
  PREINIT:
    SV *key;
    FcxHandle *x;
    STRLEN klen;
    const char *k;
    uint32_t fl = 0;
    int32_t did = 0;
    int rc;
  PPCODE:
    x = fcx_self(aTHX_ self);
    if (items != 2 || !x || !(x->policy & FCX_FAST_REMOVE) || !FCX_PLAIN(ST(1)))
        FCX_DELEGATE("_remove_general");
    key = ST(1);
    k = SvPV_nomg(key, klen);
    /* Locks, deletes and unlocks in one call. */
    rc = fc_remove(x->c, (const uint8_t *)k, klen, &did, &fl);
    if (rc)    /* warnings queued, or an error */
        fcx_done(aTHX_ x->c, rc < 0 ? -1 : 0);
    {
        dXSTARG;
        sv_setiv(TARG, did ? 1 : 0);
        ST(0) = TARG;
    }
    XSRETURN(1);

void
get_and_set(self, ...)
    SV *self
  PREINIT:
    SV *kown, *keyarg, *code;
    FcxHandle *x;
    STRLEN klen;
    const char *k;
    uint32_t slot;
    FcReadResult r;
    SV *val, *newval, *setopts, *optsref, *bytes;
    I32 n;
    int32_t stored = 0;
    U32 flags;
    U8 gimme;
  PPCODE:
    x = fcx_self(aTHX_ self);
    if (items != 3 || !x || !(x->policy & FCX_FAST_GAS) || !FCX_PLAIN(ST(1)))
        FCX_DELEGATE("_get_and_set_general");
    gimme = GIMME_V;
    /* Our own copy of the key bytes, which no Perl code can reach: the value
     * is stored under the key as passed, whatever the callback does to its
     * $_[0] (a copy too, as in the reference) or to the caller's variable. */
    kown = sv_2mortal(newSVsv(ST(1)));
    keyarg = sv_2mortal(newSVsv(kown));
    code = sv_2mortal(SvREFCNT_inc_simple_NN(ST(2)));
    k = SvPV_nomg(kown, klen);
    FCX_GUARD_BEGIN(x);
    slot = fcx_lock_key(aTHX_ x, k, klen);
    /* From here until the page is released, a die (deserializer, callback,
     * serializer, bad options) unlocks the page on its way out. */
    x->unlock_on_unwind = 1;
    val = fcx_lookup(aTHX_ x, slot, k, klen, &r);
    if (val && SvOK(val) && (x->uncomp || x->deser))
        val = fcx_thaw(aTHX_ x, val);
    if (!val)
        val = sv_newmortal();
    /* The callback's third argument: a new reference each time (so that
     * assigning to $_[2] changes nothing of ours) to a hash reused from call
     * to call when the last callback kept no reference to it. */
    if (!(x->gas_opts && SvREFCNT((SV *)x->gas_opts) == 1
          && !SvMAGICAL((SV *)x->gas_opts) && !SvOBJECT((SV *)x->gas_opts)
          && !SvREADONLY((SV *)x->gas_opts)
          && fcx_opts_update(aTHX_ x->gas_opts, &r))) {
        HV *opts = newHV();
        SvREFCNT_dec((SV *)x->gas_opts);
        x->gas_opts = opts;
        if (r.found)
            (void)hv_stores(opts, "expire_on", newSVuv((UV)r.expire_on));
        if (r.has_modseq)
            (void)hv_stores(opts, "modseq", newSVuv((UV)r.modseq));
    }
    optsref = sv_2mortal(newRV_inc((SV *)x->gas_opts));

    /* @new = $code->($key, $value, \%opts) */
    newval = setopts = NULL;
    {
        dSP;
        PUSHMARK(SP);
        EXTEND(SP, 3);
        PUSHs(keyarg);
        PUSHs(val);
        PUSHs(optsref);
        PUTBACK;
        n = call_sv(code, G_LIST);
        SPAGAIN;
        /* Return values are already temporaries: keep them alive, no copy. */
        if (n > 0)
            newval = sv_2mortal(SvREFCNT_inc_simple_NN(*(SP - n + 1)));
        if (n > 1)
            setopts = sv_2mortal(SvREFCNT_inc_simple_NN(*(SP - n + 2)));
        SP -= n;
        PUTBACK;
    }
    FCX_CHECK_OPEN(x);
    if (n > 0) {
        if (setopts && SvOK(setopts)
            && (!SvROK(setopts) || SvTYPE(SvRV(setopts)) != SVt_PVHV))
            croak("%s", "get_and_set callback options must be a hash reference");
        if (setopts && SvOK(setopts) && HvUSEDKEYS((HV *)SvRV(setopts))) {
            /* Options (expiry, modseq): the Perl layer writes into the page
             * we hold; the guard still releases it on a die. */
            dSP;
            SV *ret;
            PUSHMARK(SP);
            EXTEND(SP, 4);
            PUSHs(self);
            PUSHs(sv_2mortal(newSVsv(kown)));
            PUSHs(newval);
            PUSHs(setopts);
            PUTBACK;
            n = call_pv("Cache::FastMmap::_store_locked_with_opts", G_SCALAR);
            SPAGAIN;
            ret = n > 0 ? POPs : &PL_sv_undef;
            PUTBACK;
            stored = SvIV(ret) == 1 ? 1 : 0;
            FCX_CHECK_OPEN(x);
        }
        else {
            bytes = (x->ser || x->comp) ? fcx_freeze(aTHX_ x, newval) : newval;
            flags = x->dirty;
            bytes = fcx_value_bytes(aTHX_ bytes, &flags);
            FCX_CHECK_OPEN(x);
            stored = fcx_store(x, k, klen, SvUTF8(kown) ? 1 : 0, slot, bytes,
                               0xFFFFFFFFU, flags) == 1 ? 1 : 0;
        }
        val = newval;
    }
    x->unlock_on_unwind = 0;
    fc_unlock(x->c);
    fcx_warnings(aTHX_ x->c);
    FCX_GUARD_END();
    ST(0) = val;
    if (gimme == G_LIST) {
        ST(1) = sv_2mortal(newSViv(stored ? 1 : 0));
        XSRETURN(2);
    }
    XSRETURN(1);

void
multi_get(self, ...)
    SV *self
  PREINIT:
    SV *pagekey, *full, *val;
    FcxHandle *x;
    STRLEN plen, klen;
    const char *p, *k;
    uint32_t page = 0, slot = 0;
    AV *av;
    HV *found;
    HE *he;
    SSize_t i, last;
    FcReadResult r;
    int thaw, any = 0, unlocked;
    uint32_t ticket = 0, t;
    FcKey kb[FCX_PEEK_BATCH];
    FcReadResult rb[FCX_PEEK_BATCH];
    SSize_t batch = 0;
    SV **keys;
  PPCODE:
    x = fcx_self(aTHX_ self);
    if (items != 3 || !x || !(x->policy & FCX_FAST_OTHER) || !FCX_PLAIN(ST(1))
        || !SvROK(ST(2)) || SvTYPE(SvRV(ST(2))) != SVt_PVAV || SvRMAGICAL(SvRV(ST(2))))
        FCX_DELEGATE("_multi_get_general");
    av = (AV *)SvRV(ST(2));
    last = av_len(av);
    /* Every key must turn into bytes without running Perl code.  The array
     * has no magic (checked above) and nothing below changes it, so its
     * elements are read from AvARRAY directly. */
    keys = AvARRAY(av);
    for (i = 0; i <= last; i++) {
        if (!keys[i] || !FCX_PLAIN(keys[i]))
            FCX_DELEGATE("_multi_get_general");
    }
    pagekey = ST(1);
    p = SvPV_nomg(pagekey, plen);
    fc_hash(x->c, (const uint8_t *)p, plen, &page, &slot);
    thaw = x->uncomp || x->deser;
    found = (HV *)sv_2mortal((SV *)newHV());
    /* Its keys are not entered in perl's shared string table: storing and
     * freeing each would otherwise look it up there too. */
    HvSHAREKEYS_off(found);
    if (last >= 8)
        hv_ksplit(found, last + 1);   /* sized once, not split while filling */
    /* One buffer for every "$PageKey-$Key", reused key after key. */
    full = sv_2mortal(newSV(plen + 64));
    sv_setpvn(full, p, plen);
    sv_catpvn_nomg(full, "-", 1);
    /* First without the lock: the keys are peeked FCX_PEEK_BATCH at a time,
     * all under one ticket of the page's change counter, and confirmed after
     * their values are copied (which also moves their access times on), so
     * the whole call is one consistent view of the page, as under the lock.
     * The key pointers are used before any other call, and no Perl code
     * runs in between (the keys are plain).  Any change meanwhile, and the
     * whole call reads again under the lock.  The result hash is our own:
     * storing into it or emptying it runs no Perl code. */
    unlocked = 1;
    for (i = 0; i <= last && unlocked; i += batch) {
        SSize_t j;
        batch = last + 1 - i < FCX_PEEK_BATCH ? last + 1 - i : FCX_PEEK_BATCH;
        for (j = 0; j < batch; j++) {
            STRLEN kl;
            kb[j].ptr = (const uint8_t *)SvPV_nomg(keys[i + j], kl);
            kb[j].len = kl;
        }
        if (!fc_peek_many(x->c, page, (const uint8_t *)p, plen, kb, (size_t)batch, rb, &t)
            || (i > 0 && t != ticket)) {
            unlocked = 0;
            break;
        }
        ticket = t;
        for (j = 0; j < batch; j++) {
            if (rb[j].found) {
                (void)hv_store_ent(found, keys[i + j],
                                   fcx_value(aTHX_ rb[j].val, rb[j].val_len, rb[j].flags), 0);
                any = 1;
            }
        }
        if (!fc_peek_confirm(x->c, page, ticket))
            unlocked = 0;
    }
    if (!unlocked) {
        hv_clear(found);
        any = 0;
    }
    if (!unlocked && fc_lock(x->c, page) != 0)
        fcx_done(aTHX_ x->c, -1);
    /* Values go straight from the page into the result hash. */
    for (i = 0; i <= last && !unlocked; i++) {
        SV *ks = keys[i];
        k = fcx_multi_key_into(aTHX_ x, full, plen, ks, &klen, &slot);
        if (fc_read(x->c, slot, (const uint8_t *)k, klen, &r) != 0)
            fcx_fail_unlock(aTHX_ x->c);
        if (r.found) {
            (void)hv_store_ent(found, ks, fcx_value(aTHX_ r.val, r.val_len, r.flags), 0);
            any = 1;
        }
    }
    if (!unlocked)
        fc_unlock(x->c);
    if (thaw && any) {
        FCX_GUARD_BEGIN(x);
        fcx_warnings(aTHX_ x->c);
        hv_iterinit(found);
        while ((he = hv_iternext(found))) {
            val = HeVAL(he);
            if (SvOK(val)) {
                FCX_CHECK_OPEN(x);
                val = fcx_thaw(aTHX_ x, val);
                sv_setsv(HeVAL(he), val);
            }
        }
        FCX_GUARD_END();
    }
    else
        fcx_warnings(aTHX_ x->c);
    ST(0) = sv_2mortal(newRV_inc((SV *)found));
    XSRETURN(1);

void
multi_set(self, ...)
    SV *self
  PREINIT:
    SV *pagekey;
    FcxHandle *x;
    STRLEN plen, klen;
    const char *p, *k;
    uint32_t page = 0, slot = 0;
    U32 expire_on = 0xFFFFFFFFU, flags;
    HV *hv;
    HE *he;
    AV *todo;
    SSize_t i, last;
  PPCODE:
    x = fcx_self(aTHX_ self);
    if (items < 3 || items > 4 || !x || !(x->policy & FCX_FAST_MSET) || !FCX_PLAIN(ST(1))
        || !SvROK(ST(2)) || SvTYPE(SvRV(ST(2))) != SVt_PVHV || SvRMAGICAL(SvRV(ST(2)))
        || (items == 4 && (SvGMAGICAL(ST(3)) || SvROK(ST(3)))))
        FCX_DELEGATE("_multi_set_general");
    pagekey = ST(1);
    if (items == 4 && SvOK(ST(3)))
        expire_on = fcx_expire_on(aTHX_ ST(3), fc_now());
    hv = (HV *)SvRV(ST(2));
    p = SvPV_nomg(pagekey, plen);
    fc_hash(x->c, (const uint8_t *)p, plen, &page, &slot);
    FCX_GUARD_BEGIN(x);
    /* All keys and values into bytes before locking: first a snapshot of the
     * hash (no Perl code runs while iterating it), then the serializer and
     * stringification of each value.  A die there writes nothing. */
    todo = (AV *)sv_2mortal((SV *)newAV());
    hv_iterinit(hv);
    while ((he = hv_iternext(hv))) {
        /* (SvREFCNT_inc_simple_NN evaluates its argument twice.) */
        SV *full = fcx_multi_key(aTHX_ p, plen, hv_iterkeysv(he));
        SV *val = hv_iterval(hv, he);
        av_push(todo, SvREFCNT_inc_simple_NN(full));
        av_push(todo, SvREFCNT_inc_simple_NN(val));
    }
    last = av_len(todo);
    for (i = 1; i <= last; i += 2) {
        SV **vp = av_fetch(todo, i, 0);
        SV *b = (x->ser || x->comp) ? fcx_freeze(aTHX_ x, *vp) : *vp;
        flags = 0;
        b = fcx_value_bytes(aTHX_ b, &flags);
        /* Keep the bytes and their UTF-8 bit together; undef stays undef. */
        (void)av_store(todo, i, b ? newSVsv_nomg(b) : newSV(0));
    }
    FCX_CHECK_OPEN(x);
    if (fc_lock(x->c, page) != 0)
        fcx_done(aTHX_ x->c, -1);
    x->unlock_on_unwind = 1;
    for (i = 0; i < last; i += 2) {
        SV *full = *av_fetch(todo, i, 0);
        SV *b = *av_fetch(todo, i + 1, 0);
        k = SvPV_nomg(full, klen);
        fc_hash(x->c, (const uint8_t *)k, klen, NULL, &slot);
        flags = (SvOK(b) && SvUTF8(b)) ? FCX_UTF8VAL : 0;
        (void)fcx_store(x, k, klen, 0, slot, SvOK(b) ? b : NULL, expire_on, flags);
    }
    x->unlock_on_unwind = 0;
    fc_unlock(x->c);
    fcx_warnings(aTHX_ x->c);
    FCX_GUARD_END();
    ST(0) = sv_2mortal(newSViv(1));
    XSRETURN(1);

void
_xs_noop(...)
  PPCODE:
    /* The floor for benchmarks: one XS method call doing nothing. */
    PERL_UNUSED_VAR(items);
    XSRETURN_EMPTY;



# ---------------------------------------------------------------------------
# STATISTICS AND INSPECTION
#
# $cache->stats (fc_stats), and Cache::FastMmap::Inspect, the read-only view
# of a share file used by the fastmmap command.  An inspection handle lives
# in ext magic like a cache handle (Perl code can neither forge nor copy it)
# and is never cloned into a new thread (CLONE_SKIP).  No Perl code runs
# while the engine works here, and nothing here takes a page lock.
# ---------------------------------------------------------------------------

#include "fcx_inspect.h"

MODULE = Cache::FastMmap        PACKAGE = Cache::FastMmap

PROTOTYPES: DISABLE

SV *
fc_stats(obj)
    SV *obj
  PREINIT:
    FcStats s;
    FcCache *h;
    HV *hv;
  CODE:
    h = fcx_handle(aTHX_ obj);
    Zero(&s, 1, FcStats);
    FCX_CHECK(h, fc_stats(h, &s));
    hv = newHV();
    RETVAL = newRV_noinc((SV *)hv);
    (void)hv_stores(hv, "entries", newSVuv((UV)s.entries));
    (void)hv_stores(hv, "capacity_bytes", newSVuv((UV)s.capacity_bytes));
    (void)hv_stores(hv, "used_bytes", newSVuv((UV)s.used_bytes));
    (void)hv_stores(hv, "evictions", newSVuv((UV)s.evictions));
    (void)hv_stores(hv, "expirations", newSVuv((UV)s.expirations));
    (void)hv_stores(hv, "repairs", newSVuv((UV)s.repairs));
    (void)hv_stores(hv, "reads", newSVuv((UV)s.reads));
    (void)hv_stores(hv, "hits", newSVuv((UV)s.hits));
    (void)hv_stores(hv, "num_pages", newSVuv((UV)s.num_pages));
    (void)hv_stores(hv, "page_size", newSVuv((UV)s.page_size));
    fcx_warnings(aTHX_ h);
  OUTPUT:
    RETVAL


MODULE = Cache::FastMmap        PACKAGE = Cache::FastMmap::Inspect

PROTOTYPES: DISABLE

SV *
open(klass, path, writable = 0)
    const char *klass
    SV *path
    int writable
  PREINIT:
    STRLEN plen;
    const char *p;
    FcInspect *ih;
    const char *err;
    SV *inner;
  CODE:
    p = SvPV(path, plen);
    ih = fc_inspect_open((const uint8_t *)p, plen, writable);
    if (!ih)
        croak("%s", "Cache::FastMmap::Inspect: out of memory");
    err = fc_inspect_open_error(ih);
    if (err) {
        SV *msg = sv_2mortal(newSVpv(err, 0));
        fc_inspect_close(ih);
        croak("%" SVf "\n", SVfARG(msg));
    }
    inner = newSViv(1);
    (void)sv_magicext(inner, NULL, PERL_MAGIC_ext, &fcx_insp_vtbl, (const char *)ih, 0);
    RETVAL = sv_bless(newRV_noinc(inner), gv_stashpv(klass, GV_ADD));
  OUTPUT:
    RETVAL

SV *
header(self)
    SV *self
  PREINIT:
    FcInspect *ih;
    FcFileInfo f;
    HV *hv;
  CODE:
    ih = fcx_insp(aTHX_ self);
    Zero(&f, 1, FcFileInfo);
    if (fc_inspect_header(ih, &f) != 0)
        XSRETURN_UNDEF;
    hv = newHV();
    RETVAL = newRV_noinc((SV *)hv);
    (void)hv_stores(hv, "format_version", newSVuv((UV)f.format_version));
    (void)hv_stores(hv, "page_size", newSVuv((UV)f.page_size));
    (void)hv_stores(hv, "num_pages", newSVuv((UV)f.num_pages));
    (void)hv_stores(hv, "start_slots", newSVuv((UV)f.start_slots));
    (void)hv_stores(hv, "file_size", newSVuv((UV)f.file_size));
    (void)hv_stores(hv, "lock_table_offset", newSVuv((UV)f.lock_table_off));
    (void)hv_stores(hv, "pages_offset", newSVuv((UV)f.pages_off));
    (void)hv_stores(hv, "page_stride", newSVuv((UV)f.page_stride));
    (void)hv_stores(hv, "in_use", newSVuv((UV)f.in_use));
    (void)hv_stores(hv, "reads", newSVuv((UV)f.reads));
    (void)hv_stores(hv, "hits", newSVuv((UV)f.hits));
    (void)hv_stores(hv, "evictions", newSVuv((UV)f.evictions));
    (void)hv_stores(hv, "expirations", newSVuv((UV)f.expirations));
    (void)hv_stores(hv, "repairs", newSVuv((UV)f.repairs));
  OUTPUT:
    RETVAL

SV *
message(self)
    SV *self
  CODE:
    RETVAL = newSVpv(fc_inspect_message(fcx_insp(aTHX_ self)), 0);
  OUTPUT:
    RETVAL

SV *
page(self, n, with_items = 0)
    SV *self
    UV n
    int with_items
  PREINIT:
    FcInspect *ih;
    FcPageInfo pi;
    HV *hv;
    U32 i;
  CODE:
    ih = fcx_insp(aTHX_ self);
    Zero(&pi, 1, FcPageInfo);
    if (n > 0xFFFFFFFFUL || fc_inspect_page(ih, (uint32_t)n, with_items, &pi) != 0) {
        SV *msg = sv_2mortal(n > 0xFFFFFFFFUL ? newSVpvs("no such page")
                                              : newSVpv(fc_inspect_message(ih), 0));
        croak("%" SVf "\n", SVfARG(msg));
    }
    hv = newHV();
    RETVAL = newRV_noinc((SV *)hv);
    (void)hv_stores(hv, "state", newSVpv(pi.state == 0 ? "sound" : pi.state == 1 ? "damaged"
                                         : pi.state == 2 ? "busy" : "unfinished", 0));
    (void)hv_stores(hv, "lock", newSVpv(pi.lock == 0 ? "free" : pi.lock == 1 ? "held"
                                        : pi.lock == 2 ? "held by a dead process" : "malformed", 0));
    (void)hv_stores(hv, "problems", newSVpv(fc_inspect_message(ih), 0));
    (void)hv_stores(hv, "num_slots", newSVuv((UV)pi.num_slots));
    (void)hv_stores(hv, "free_slots", newSVuv((UV)pi.free_slots));
    (void)hv_stores(hv, "deleted_slots", newSVuv((UV)pi.old_slots));
    (void)hv_stores(hv, "free_bytes", newSVuv((UV)pi.free_bytes));
    (void)hv_stores(hv, "entries", newSVuv((UV)pi.entries));
    (void)hv_stores(hv, "expired", newSVuv((UV)pi.expired));
    (void)hv_stores(hv, "tombstones", newSVuv((UV)pi.tombstones));
    (void)hv_stores(hv, "dirty", newSVuv((UV)pi.dirty));
    (void)hv_stores(hv, "nreads", newSVuv((UV)pi.nreads));
    (void)hv_stores(hv, "nreadhits", newSVuv((UV)pi.nhits));
    (void)hv_stores(hv, "oldest_access", newSVuv((UV)pi.oldest));
    (void)hv_stores(hv, "newest_access", newSVuv((UV)pi.newest));
    if (with_items) {
        AV *av = newAV();
        (void)hv_stores(hv, "items", newRV_noinc((SV *)av));
        for (i = 0; i < pi.nitems; i++) {
            FcItem it;
            HV *ihv;
            if (fc_inspect_item(ih, i, &it) != 0)
                break;
            ihv = newHV();
            (void)hv_stores(ihv, "key",
                fcx_bytes(aTHX_ it.key, it.key_len, (it.flags & FCX_UTF8KEY) ? 1 : 0));
            (void)hv_stores(ihv, "value_bytes", newSVuv((UV)it.val_len));
            (void)hv_stores(ihv, "last_access", newSVuv((UV)it.last_access));
            (void)hv_stores(ihv, "expire_on", newSVuv((UV)it.expire_on));
            (void)hv_stores(ihv, "flags", newSVuv((UV)it.flags));
            if (it.has_modseq)
                (void)hv_stores(ihv, "modseq", newSVuv((UV)it.modseq));
            av_push(av, newRV_noinc((SV *)ihv));
        }
    }
  OUTPUT:
    RETVAL

void
repair(self)
    SV *self
  PREINIT:
    FcInspect *ih;
    int64_t n;
  PPCODE:
    ih = fcx_insp(aTHX_ self);
    n = fc_inspect_repair(ih);
    if (n < 0) {
        SV *msg = sv_2mortal(newSVpv(fc_inspect_message(ih), 0));
        croak("%" SVf "\n", SVfARG(msg));
    }
    EXTEND(SP, 2);
    mPUSHi((IV)n);
    mPUSHs(newSVpv(fc_inspect_message(ih), 0));

void
close(self)
    SV *self
  PREINIT:
    MAGIC *mg;
  CODE:
    mg = SvROK(self) ? mg_findext(SvRV(self), PERL_MAGIC_ext, &fcx_insp_vtbl) : NULL;
    if (mg && mg->mg_ptr) {
        FcInspect *ih = (FcInspect *)mg->mg_ptr;
        mg->mg_ptr = NULL;
        fc_inspect_close(ih);
    }

int
CLONE_SKIP(...)
  CODE:
    PERL_UNUSED_VAR(items);
    RETVAL = 1;
  OUTPUT:
    RETVAL
