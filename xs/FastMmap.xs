/*
 * FastMmap.xs -- Perl glue for the Rust engine of Cache::FastMmap.
 *
 * This layer only converts between Perl scalars and bytes, croaks with the
 * engine's message when a call failed, and builds the result lists.  It knows
 * nothing about pages, slots or the file format: that is all in rust/.
 *
 * Rules kept throughout:
 *   - every argument is stringified at most once (SvPV), so get-magic and
 *     overloading run once; the raw internal bytes are passed, and the UTF-8
 *     flag travels separately in the item flags (FC_UTF8KEY / FC_UTF8VAL);
 *   - croak() is only ever called from C after the engine call returned, never
 *     from inside a Rust frame, and always as croak("%s", msg);
 *   - value bytes returned by fc_read point into the locked page; they are
 *     copied exactly once, straight into the new SV, before returning to Perl
 *     (the Perl layer unlocks afterwards);
 *   - everything pushed on the stack is mortal (or a TARG), so nothing leaks
 *     when a later croak unwinds.
 */

#define PERL_NO_GET_CONTEXT
#include "EXTERN.h"
#include "perl.h"
#include "XSUB.h"
#include "ppport.h"

#include "fastmmap.h"

/* The handle stored in $self->{Cache}: a blessed reference to an IV that
 * holds an FcxHandle pointer (0 once closed).  Besides the engine handle it
 * keeps what the Perl layer decided at construction for the one-call fast
 * paths (see fc_set_policy and the FAST PATHS section). */
typedef struct {
    FcCache *c;
    U32 policy;     /* FCX_FAST_* bits: which methods may skip the Perl layer */
    U32 dirty;      /* FC_ISDIRTY in write_back mode, else 0 */
    SV *ser;        /* code refs (owned) or NULL */
    SV *deser;
    SV *comp;
    SV *uncomp;
    SV *gas_opts;   /* get_and_set's options hash ref, reused when unshared */
    GV *deser_flags; /* Storable's mretrieve: pass $Storable::flags, as thaw does */
    U32 busy;       /* fast paths running Perl code with this handle (see FCX_GUARD) */
    U32 closed;     /* closed while busy: the last guard frees it */
    U32 unlock_on_unwind;  /* a die through the guard must release the page lock */
} FcxHandle;

typedef FcCache *FcObj;

/* Fast-path policy bits, set by the Perl layer through fc_set_policy. */
#define FCX_FAST_GET    0x01   /* no read_cb */
#define FCX_FAST_SET    0x02   /* no write_cb */
#define FCX_FAST_REMOVE 0x04   /* no delete_cb */
#define FCX_FAST_GAS    0x08   /* get_and_set: no read_cb and no write_cb */
#define FCX_FAST_MSET   0x10   /* multi_set: no write-back callback */
#define FCX_FAST_OTHER  0x20   /* exists, multi_get: nothing to call back */

#ifndef G_LIST
#define G_LIST G_ARRAY
#endif

#define FCX_HANDLE_CLASS "Cache::FastMmap::Handle"

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

/* Turn $h into its FcxHandle or croak with the reference's messages. */
static FcxHandle *
fcx_xhandle(pTHX_ SV *obj)
{
    SV *inner;
    FcxHandle *x;

    if (!SvROK(obj))
        croak("%s", "Object not reference");
    inner = SvRV(obj);
    if (!SvIOK(inner))
        croak("%s", "Object not initialised correctly");
    x = INT2PTR(FcxHandle *, SvIVX(inner));
    if (!x)
        croak("%s", "Object not created correctly");
    return x;
}

/* The engine pointer of $h (typemap FcObj). */
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
    SvREFCNT_dec(x->gas_opts);
    Safefree(x);
}

/* Croak with the engine's last error.  Only called after the engine returned. */
static void
fcx_fail(pTHX_ const FcCache *c)
{
    const char *msg = fc_last_error(c);
    croak("%s", (msg && *msg) ? msg : "Unknown error");
}

/* Pass on the engine's queued warnings (a repaired page, ...) as Perl
 * warnings.  Only called after the engine returned. */
static void
fcx_warnings(pTHX_ FcCache *c)
{
    const char *w;
    while ((w = fc_take_warning(c)) != NULL)
        warn("%s", w);
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
 * FAST PATHS
 *
 * get, set, exists, remove, get_and_set, multi_get and multi_set are XS
 * methods.  When the cache has no callback that the call could need (the
 * policy bits set by the Perl layer at construction) and the arguments are
 * the plain ones, each does hash + lock + work + unlock in this one call.
 * Anything else is handed, with the original arguments, to the Perl
 * implementation (_get_general, _set_general, ...), which keeps the full
 * upstream semantics.  Serializers and compressors are called from here.
 * ---------------------------------------------------------------------- */

/* Identifies the magic, attached to each cache object's hash by new()
 * (fc_attach), that points at the object's handle: reaching the handle costs
 * a walk of a one-element magic chain instead of a hash lookup. */
static MGVTBL fcx_obj_vtbl;

/* The object's handle, or NULL when anything is unusual (no magic: a copied
 * or half-built object; a closed handle): the general path then reports it
 * the upstream way. */
static FcxHandle *
fcx_self(pTHX_ SV *self)
{
    MAGIC *mg;
    SV *inner;
    if (!SvROK(self) || !SvMAGICAL(SvRV(self)))
        return NULL;
    for (mg = SvMAGIC(SvRV(self)); mg; mg = mg->mg_moremagic) {
        if (mg->mg_type == PERL_MAGIC_ext && mg->mg_virtual == &fcx_obj_vtbl) {
            inner = mg->mg_obj;
            return SvIOK(inner) ? INT2PTR(FcxHandle *, SvIVX(inner)) : NULL;
        }
    }
    return NULL;
}

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
 * the result.  A die propagates (inside a guard when a lock is held). */
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

/* parse_expire_time($spec, $base) for a plain scalar (SPEC 1.3). */
static U32
fcx_expire_on(pTHX_ SV *spec, U32 base)
{
    STRLEN len, i = 0;
    const char *s;
    UV n = 0, unit = 1;
    int digits = 0;

    if (!SvTRUE(spec))
        return base;                    /* '' / 0 / undef: offset 0 */
    s = SvPV(spec, len);
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

/* Stores key => stored bytes in the locked page (expunging first like
 * upstream's set).  Returns the engine's 1/0/-1; croaks (unlocking) on an
 * engine error. */
static int32_t
fcx_store(pTHX_ FcxHandle *x, const char *k, STRLEN klen, int kutf8,
          uint32_t slot, SV *stored, U32 expire_on, U32 flags)
{
    STRLEN vlen = 0;
    const char *v = "";
    int32_t result = 0;
    size_t n = 0;

    if (stored)
        SvGETMAGIC(stored);     /* tied values, $1, substr lvalues, ... */
    if (stored && SvOK(stored)) {
        v = SvPV_nomg(stored, vlen);
        if (SvUTF8(stored))
            flags |= FCX_UTF8VAL;
        if (kutf8)
            flags |= FCX_UTF8KEY;
    }
    else {
        flags |= FCX_UNDEF;
    }
    if (fc_expunge(x->c, 2, 0, (int64_t)(klen + vlen), &n) != 0
        || fc_write(x->c, slot, (const uint8_t *)k, klen, (const uint8_t *)v, vlen,
                    expire_on, flags, 0, 0, &result) != 0)
        fcx_fail_unlock(aTHX_ x->c);
    return result;
}

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

/* multi_get/multi_set's "$PageKey-$Key" as the Perl layer builds it under
 * "use bytes": the raw bytes of both, never flagged UTF-8 (mortal). */
static SV *
fcx_multi_key(pTHX_ const char *p, STRLEN plen, SV *key)
{
    STRLEN klen;
    const char *k = SvPV(key, klen);
    SV *full = sv_2mortal(newSV(plen + klen + 2));
    sv_setpvn(full, p, plen);
    sv_catpvn(full, "-", 1);
    sv_catpvn(full, k, klen);
    return full;
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

/* Hashes and locks the page of key; croaks on a lock error (nothing held). */
static uint32_t
fcx_lock_key(pTHX_ FcxHandle *x, const char *k, STRLEN klen)
{
    uint32_t page = 0, slot = 0;
    fc_hash(x->c, (const uint8_t *)k, klen, &page, &slot);
    if (fc_lock(x->c, page) != 0)
        fcx_done(aTHX_ x->c, -1);
    return slot;
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
  CODE:
    Newxz(x, 1, FcxHandle);
    x->c = fc_new();
    if (!x->c) {
        Safefree(x);
        croak("%s", "Cache::FastMmap: out of memory creating the cache handle");
    }
    RETVAL = sv_bless(newRV_noinc(newSViv(PTR2IV(x))),
                      gv_stashpv(FCX_HANDLE_CLASS, GV_ADD));
  OUTPUT:
    RETVAL

void
fc_set_param(h, name, value)
    FcObj h
    SV *name
    SV *value
  PREINIT:
    STRLEN nlen, vlen;
    const char *n, *v;
  CODE:
    n = SvPV(name, nlen);
    v = SvPV(value, vlen);
    FCX_CHECK(h, fc_set_param(h, (const uint8_t *)n, nlen, (const uint8_t *)v, vlen));

void
fc_init(h)
    FcObj h
  CODE:
    FCX_CHECK_W(h, fc_init(h));

void
fc_close(obj)
    SV *obj
  PREINIT:
    FcxHandle *x;
  CODE:
    x = fcx_xhandle(aTHX_ obj);
    /* Zero the IV first: any later use croaks instead of touching freed memory. */
    sv_setiv(SvRV(obj), 0);
    fcx_free(aTHX_ x);

void
fc_hash(h, key)
    FcObj h
    SV *key
  PREINIT:
    STRLEN klen;
    const char *k;
    uint32_t page = 0, slot_hash = 0;
  PPCODE:
    k = SvPV(key, klen);
    fc_hash(h, (const uint8_t *)k, klen, &page, &slot_hash);
    EXTEND(SP, 2);
    mPUSHu((UV)page);
    mPUSHu((UV)slot_hash);

void
fc_lock(h, page)
    FcObj h
    U32 page
  CODE:
    FCX_CHECK_W(h, fc_lock(h, (uint32_t)page));

void
fc_unlock(h)
    FcObj h
  CODE:
    fc_unlock(h);

IV
fc_is_locked(h)
    FcObj h
  CODE:
    RETVAL = fc_is_locked(h) ? 1 : 0;
  OUTPUT:
    RETVAL

void
fc_read(h, slot, key)
    FcObj h
    U32 slot
    SV *key
  PREINIT:
    STRLEN klen;
    const char *k;
    FcReadResult r;
    SV *val;
    int rc;
  PPCODE:
    k = SvPV(key, klen);
    Zero(&r, 1, FcReadResult);
    rc = fc_read(h, (uint32_t)slot, (const uint8_t *)k, klen, &r);
    if (rc != 0)
        fcx_done(aTHX_ h, rc);
    /* r.val points into the locked page: copy it now, once, before any
     * warning is passed on (a __WARN__ handler could change the page). */
    if (r.found)
        val = sv_2mortal(fcx_value(aTHX_ r.val, r.val_len, r.flags));
    else
        val = &PL_sv_undef;
    fcx_warnings(aTHX_ h);
    EXTEND(SP, 5);
    PUSHs(val);
    mPUSHu((UV)(r.flags & ~FCX_STRIP_READ));
    mPUSHi(r.found ? 1 : 0);
    mPUSHu((UV)r.expire_on);
    if (r.has_modseq)
        mPUSHu((UV)r.modseq);
    else
        PUSHs(&PL_sv_undef);

IV
fc_write(h, slot, key, val, expire_on, flags, modseq = NULL)
    FcObj h
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
  CODE:
    k = SvPV(key, klen);
    SvGETMAGIC(val);
    if (!SvOK(val)) {
        /* undef is stored as an empty value marked FC_UNDEF; like the
         * reference, the key's UTF-8 flag is not recorded in this case. */
        v = "";
        vlen = 0;
        flags |= FCX_UNDEF;
    }
    else {
        v = SvPV_nomg(val, vlen);
        if (SvUTF8(val))
            flags |= FCX_UTF8VAL;
        if (SvUTF8(key))
            flags |= FCX_UTF8KEY;
    }
    has_ms = fcx_modseq(aTHX_ modseq, &ms);
    FCX_CHECK_W(h, fc_write(h, (uint32_t)slot, (const uint8_t *)k, klen,
                          (const uint8_t *)v, vlen, (uint32_t)expire_on,
                          (uint32_t)flags, has_ms, ms, &stored));
    RETVAL = (IV)stored;
  OUTPUT:
    RETVAL

IV
fc_tombstone(h, slot, key, expire_on, modseq)
    FcObj h
    U32 slot
    SV *key
    U32 expire_on
    SV *modseq
  PREINIT:
    STRLEN klen;
    const char *k;
    uint64_t ms = 0;
    int32_t stored = 0;
  CODE:
    k = SvPV(key, klen);
    if (!fcx_modseq(aTHX_ modseq, &ms))
        croak("%s", "fc_tombstone requires a modseq");
    FCX_CHECK_W(h, fc_tombstone(h, (uint32_t)slot, (const uint8_t *)k, klen,
                              (uint32_t)expire_on, SvUTF8(key) ? FCX_UTF8KEY : 0,
                              ms, &stored));
    RETVAL = (IV)stored;
  OUTPUT:
    RETVAL

void
fc_delete(h, slot, key)
    FcObj h
    U32 slot
    SV *key
  PREINIT:
    STRLEN klen;
    const char *k;
    int32_t did = 0;
    uint32_t fl = 0;
  PPCODE:
    k = SvPV(key, klen);
    FCX_CHECK_W(h, fc_delete(h, (uint32_t)slot, (const uint8_t *)k, klen, &did, &fl));
    EXTEND(SP, 2);
    mPUSHi(did ? 1 : 0);
    mPUSHu(did ? (UV)(fl & ~FCX_STRIP_READ) : 0);

void
fc_expunge(h, mode, wb, len)
    FcObj h
    IV mode
    IV wb
    IV len
  PREINIT:
    size_t n = 0, i;
    FcItem it;
    int rc;
  PPCODE:
    rc = fc_expunge(h, (int32_t)mode, wb ? 1 : 0, (int64_t)len, &n);
    if (rc != 0)
        fcx_done(aTHX_ h, rc);
    if (wb && n) {
        EXTEND(SP, (SSize_t)n);
        for (i = 0; i < n; i++) {
            FCX_CHECK(h, fc_item(h, i, &it));
            if (it.flags & FCX_TOMBSTONE)
                continue;
            PUSHs(sv_2mortal(fcx_item_ref(aTHX_ &it, 1, FCX_STRIP_READ)));
        }
    }
    /* Only now: a __WARN__ handler could start another batch on this handle. */
    fcx_warnings(aTHX_ h);

void
fc_get_keys(h, mode)
    FcObj h
    IV mode
  PREINIT:
    size_t n = 0, i;
    FcItem it;
    int rc;
  PPCODE:
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
        fcx_warnings(aTHX_ h);
    }

void
fc_get_page_details(h)
    FcObj h
  PREINIT:
    uint32_t nreads = 0, nreadhits = 0;
  PPCODE:
    FCX_CHECK(h, fc_get_page_details(h, &nreads, &nreadhits));
    EXTEND(SP, 2);
    mPUSHu((UV)nreads);
    mPUSHu((UV)nreadhits);

void
fc_reset_page_details(h)
    FcObj h
  CODE:
    FCX_CHECK(h, fc_reset_page_details(h));

void
fc_set_time_override(t)
    UV t
  CODE:
    fc_set_time_override((uint32_t)t);

UV
fc_repaired_pages(h)
    FcObj h
  CODE:
    RETVAL = (UV)fc_repaired_pages(h);
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
     * a reference to the handle's IV, which fc_close zeroes. */
    (void)fcx_xhandle(aTHX_ h);
    if (!SvROK(self) || SvTYPE(SvRV(self)) != SVt_PVHV)
        croak("%s", "fc_attach: not a cache object");
    if (!fcx_self(aTHX_ self))
        sv_magicext(SvRV(self), SvRV(h), PERL_MAGIC_ext, &fcx_obj_vtbl, NULL, 0);

void
get(self, ...)
    SV *self
  PREINIT:
    SV *key;
    FcxHandle *x;
    STRLEN klen;
    const char *k;
    uint32_t page = 0, slot = 0, ticket = 0;
    FcReadResult r;
    SV *val;
  PPCODE:
    x = fcx_self(aTHX_ self);
    if (items != 2 || !x || !(x->policy & FCX_FAST_GET))
        FCX_DELEGATE("_get_general");
    key = ST(1);
    k = SvPV(key, klen);
    fc_hash(x->c, (const uint8_t *)k, klen, &page, &slot);
    /* First without the lock (a sequence-lock read): the copy is kept only if
     * the page did not change meanwhile, else we lock and read again. */
    if (fc_peek(x->c, page, slot, (const uint8_t *)k, klen, &r, &ticket)) {
        if (!r.found || (r.flags & FCX_UNDEF))
            val = &PL_sv_undef;
        else if (!x->uncomp && !x->deser) {
            dXSTARG;
            sv_setpvn(TARG, r.val_len ? (const char *)r.val : "", (STRLEN)r.val_len);
            if (r.flags & FCX_UTF8VAL)
                SvUTF8_on(TARG);
            else
                SvUTF8_off(TARG);
            val = TARG;
        }
        else
            val = sv_2mortal(fcx_value(aTHX_ r.val, r.val_len, r.flags));
        if (fc_peek_confirm(x->c, page, ticket)) {
            if (SvOK(val) && (x->uncomp || x->deser)) {
                FCX_GUARD_BEGIN(x);
                val = fcx_thaw(aTHX_ x, val);
                FCX_GUARD_END();
            }
            PUSHs(val);
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
        if (r.found && !(r.flags & FCX_UNDEF)) {
            sv_setpvn(TARG, r.val_len ? (const char *)r.val : "", (STRLEN)r.val_len);
            if (r.flags & FCX_UTF8VAL)
                SvUTF8_on(TARG);
            else
                SvUTF8_off(TARG);
            val = TARG;
        }
        else {
            val = &PL_sv_undef;
        }
        fc_unlock(x->c);
        fcx_warnings(aTHX_ x->c);
        PUSHs(val);
        XSRETURN(1);
    }
    val = fcx_lookup(aTHX_ x, slot, k, klen, &r);
    fc_unlock(x->c);
    FCX_GUARD_BEGIN(x);
    fcx_warnings(aTHX_ x->c);
    if (val && SvOK(val))
        val = fcx_thaw(aTHX_ x, val);
    FCX_GUARD_END();
    PUSHs(val ? val : &PL_sv_undef);

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
    if (items != 2 || !x || !(x->policy & FCX_FAST_OTHER))
        FCX_DELEGATE("_exists_general");
    key = ST(1);
    k = SvPV(key, klen);
    fc_hash(x->c, (const uint8_t *)k, klen, &page, &slot);
    if (fc_peek(x->c, page, slot, (const uint8_t *)k, klen, &r, &ticket)
        && fc_peek_confirm(x->c, page, ticket)) {
        mPUSHi(r.found ? 1 : 0);
        XSRETURN(1);
    }
    if (fc_lock(x->c, page) != 0)
        fcx_done(aTHX_ x->c, -1);
    if (fc_read(x->c, slot, (const uint8_t *)k, klen, &r) != 0)
        fcx_fail_unlock(aTHX_ x->c);
    fc_unlock(x->c);
    fcx_warnings(aTHX_ x->c);
    mPUSHi(r.found ? 1 : 0);

void
set(self, ...)
    SV *self
  PREINIT:
    SV *key, *value;
    FcxHandle *x;
    STRLEN klen;
    const char *k;
    uint32_t slot;
    U32 expire_on = 0xFFFFFFFFU;
    SV *stored;
    int32_t result;
  PPCODE:
    x = fcx_self(aTHX_ self);
    if (items < 3 || items > 4 || !x || !(x->policy & FCX_FAST_SET)
        || (items == 4 && SvROK(ST(3))))
        FCX_DELEGATE("_set_general");
    key = ST(1);
    value = ST(2);
    if (items == 4 && SvOK(ST(3)))
        expire_on = fcx_expire_on(aTHX_ ST(3), fc_now());
    FCX_GUARD_BEGIN(x);
    /* Serialize before locking: a serializer that dies holds no lock. */
    stored = (x->ser || x->comp) ? fcx_freeze(aTHX_ x, value) : value;
    k = SvPV(key, klen);
    slot = fcx_lock_key(aTHX_ x, k, klen);
    result = fcx_store(aTHX_ x, k, klen, SvUTF8(key) ? 1 : 0, slot, stored,
                       expire_on, x->dirty);
    fc_unlock(x->c);
    fcx_warnings(aTHX_ x->c);
    FCX_GUARD_END();
    mPUSHi(result == 1 ? 1 : 0);

void
remove(self, ...)
    SV *self
  PREINIT:
    SV *key;
    FcxHandle *x;
    STRLEN klen;
    const char *k;
    uint32_t slot, fl = 0;
    int32_t did = 0;
  PPCODE:
    x = fcx_self(aTHX_ self);
    if (items != 2 || !x || !(x->policy & FCX_FAST_REMOVE))
        FCX_DELEGATE("_remove_general");
    key = ST(1);
    k = SvPV(key, klen);
    slot = fcx_lock_key(aTHX_ x, k, klen);
    if (fc_delete(x->c, slot, (const uint8_t *)k, klen, &did, &fl) != 0)
        fcx_fail_unlock(aTHX_ x->c);
    fc_unlock(x->c);
    fcx_warnings(aTHX_ x->c);
    mPUSHi(did ? 1 : 0);

void
get_and_set(self, ...)
    SV *self
  PREINIT:
    SV *key, *code;
    FcxHandle *x;
    STRLEN klen;
    const char *k;
    uint32_t slot;
    FcReadResult r;
    SV *val, *err = NULL, *newval, *setopts, *optsref;
    HV *opts;
    I32 n;
    int32_t stored = 0;
    U8 gimme;
  PPCODE:
    x = fcx_self(aTHX_ self);
    if (items != 3 || !x || !(x->policy & FCX_FAST_GAS))
        FCX_DELEGATE("_get_and_set_general");
    key = ST(1);
    code = ST(2);
    gimme = GIMME_V;
    k = SvPV(key, klen);
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
    /* The callback's third argument.  The hash is reused from call to call
     * when the last callback kept no reference to it. */
    if (!(x->gas_opts && SvREFCNT(x->gas_opts) == 1
          && SvREFCNT(SvRV(x->gas_opts)) == 1 && !SvMAGICAL(SvRV(x->gas_opts))
          && !SvOBJECT(SvRV(x->gas_opts))
          && SvTYPE(SvRV(x->gas_opts)) == SVt_PVHV
          && fcx_opts_update(aTHX_ (HV *)SvRV(x->gas_opts), &r))) {
        SvREFCNT_dec(x->gas_opts);
        opts = newHV();
        x->gas_opts = newRV_noinc((SV *)opts);
        if (r.found)
            (void)hv_stores(opts, "expire_on", newSVuv((UV)r.expire_on));
        if (r.has_modseq)
            (void)hv_stores(opts, "modseq", newSVuv((UV)r.modseq));
    }
    optsref = sv_2mortal(SvREFCNT_inc_simple_NN(x->gas_opts));

    /* @new = $code->($key, $value, \%opts) */
    newval = setopts = NULL;
    {
        dSP;
        PUSHMARK(SP);
        EXTEND(SP, 3);
        PUSHs(key);
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
            /* Options (expiry, modseq): the Perl set() takes over the lock
             * and always releases it. */
            HV *o = newHV();
            HE *he;
            SV *oref = sv_2mortal(newRV_noinc((SV *)o));
            HV *src = (HV *)SvRV(setopts);
            hv_iterinit(src);
            while ((he = hv_iternext(src)))
                (void)hv_store_ent(o, hv_iterkeysv(he), newSVsv(hv_iterval(src, he)), 0);
            (void)hv_stores(o, "_locked", newSViv(1));
            {
                dSP;
                SV *ret;
                PUSHMARK(SP);
                EXTEND(SP, 4);
                PUSHs(self);
                PUSHs(key);
                PUSHs(newval);
                PUSHs(oref);
                PUTBACK;
                n = call_pv("Cache::FastMmap::_set_general", G_SCALAR);
                SPAGAIN;
                ret = n > 0 ? POPs : &PL_sv_undef;
                stored = (int32_t)SvIV(ret);
                PUTBACK;
            }
            FCX_CHECK_OPEN(x);
            x->unlock_on_unwind = 0;
            if (fc_is_locked(x->c))
                fc_unlock(x->c);
        }
        else {
            SV *bytes = (x->ser || x->comp) ? fcx_freeze(aTHX_ x, newval) : newval;
            stored = fcx_store(aTHX_ x, k, klen, SvUTF8(key) ? 1 : 0, slot, bytes,
                               0xFFFFFFFFU, x->dirty) == 1 ? 1 : 0;
            x->unlock_on_unwind = 0;
            fc_unlock(x->c);
        }
        val = newval;
    }
    else {
        x->unlock_on_unwind = 0;
        fc_unlock(x->c);
    }
    fcx_warnings(aTHX_ x->c);
    FCX_GUARD_END();
    PUSHs(val);
    if (gimme == G_LIST)
        mXPUSHi(stored ? 1 : 0);

void
multi_get(self, ...)
    SV *self
  PREINIT:
    SV *pagekey, *keys;
    FcxHandle *x;
    STRLEN plen, klen;
    const char *p, *k;
    uint32_t page = 0, slot = 0;
    AV *av, *raw;
    HV *found;
    SSize_t i, last;
    FcReadResult r;
    SV *full, *val, *err = NULL;
  PPCODE:
    x = fcx_self(aTHX_ self);
    if (items != 3 || !x || !(x->policy & FCX_FAST_OTHER) || !SvROK(ST(2))
        || SvTYPE(SvRV(ST(2))) != SVt_PVAV || SvRMAGICAL(SvRV(ST(2))))
        FCX_DELEGATE("_multi_get_general");
    pagekey = ST(1);
    keys = ST(2);
    av = (AV *)SvRV(keys);
    p = SvPV(pagekey, plen);
    fc_hash(x->c, (const uint8_t *)p, plen, &page, &slot);
    found = newHV();
    sv_2mortal((SV *)found);
    raw = (AV *)sv_2mortal((SV *)newAV());
    if (fc_lock(x->c, page) != 0)
        fcx_done(aTHX_ x->c, -1);
    last = av_len(av);
    for (i = 0; i <= last; i++) {
        SV **ep = av_fetch(av, i, 0);
        SV *ks = ep ? *ep : &PL_sv_undef;
        full = fcx_multi_key(aTHX_ p, plen, ks);
        k = SvPV(full, klen);
        fc_hash(x->c, (const uint8_t *)k, klen, NULL, &slot);
        val = fcx_lookup(aTHX_ x, slot, k, klen, &r);
        if (val) {
            av_push(raw, newSVsv(ks));
            av_push(raw, SvREFCNT_inc_simple_NN(val));
        }
    }
    fc_unlock(x->c);
    FCX_GUARD_BEGIN(x);
    fcx_warnings(aTHX_ x->c);
    last = av_len(raw);
    for (i = 0; i < last; i += 2) {
        SV *ks = *av_fetch(raw, i, 0);
        val = *av_fetch(raw, i + 1, 0);
        if (SvOK(val) && (x->uncomp || x->deser))
            val = fcx_thaw(aTHX_ x, val);
        (void)hv_store_ent(found, ks, newSVsv(val), 0);
    }
    FCX_GUARD_END();
    mPUSHs(newRV_inc((SV *)found));

void
multi_set(self, ...)
    SV *self
  PREINIT:
    SV *pagekey, *kvs;
    FcxHandle *x;
    STRLEN plen, klen;
    const char *p, *k;
    uint32_t page = 0, slot = 0;
    U32 expire_on = 0xFFFFFFFFU;
    HV *hv;
    HE *he;
    SV *full, *bytes, *err = NULL;
  PPCODE:
    x = fcx_self(aTHX_ self);
    if (items < 3 || items > 4 || !x || !(x->policy & FCX_FAST_MSET) || !SvROK(ST(2))
        || SvTYPE(SvRV(ST(2))) != SVt_PVHV || SvRMAGICAL(SvRV(ST(2)))
        || (items == 4 && SvROK(ST(3))))
        FCX_DELEGATE("_multi_set_general");
    pagekey = ST(1);
    kvs = ST(2);
    if (items == 4 && SvOK(ST(3)))
        expire_on = fcx_expire_on(aTHX_ ST(3), fc_now());
    hv = (HV *)SvRV(kvs);
    p = SvPV(pagekey, plen);
    fc_hash(x->c, (const uint8_t *)p, plen, &page, &slot);
    FCX_GUARD_BEGIN(x);
    if (fc_lock(x->c, page) != 0)
        fcx_done(aTHX_ x->c, -1);
    x->unlock_on_unwind = 1;
    hv_iterinit(hv);
    while ((he = hv_iternext(hv))) {
        SV *ks = hv_iterkeysv(he);
        full = fcx_multi_key(aTHX_ p, plen, ks);
        /* As upstream: serialized under the lock; a die stops part-way,
         * keeping the entries already written. */
        bytes = (x->ser || x->comp) ? fcx_freeze(aTHX_ x, hv_iterval(hv, he))
                                    : hv_iterval(hv, he);
        k = SvPV(full, klen);
        fc_hash(x->c, (const uint8_t *)k, klen, NULL, &slot);
        (void)fcx_store(aTHX_ x, k, klen, 0, slot, bytes, expire_on, 0);
    }
    x->unlock_on_unwind = 0;
    fc_unlock(x->c);
    fcx_warnings(aTHX_ x->c);
    FCX_GUARD_END();
    mPUSHi(1);

void
_xs_noop(...)
  PPCODE:
    /* The floor for benchmarks: one XS method call doing nothing. */
    PERL_UNUSED_VAR(items);
    XSRETURN_EMPTY;


MODULE = Cache::FastMmap        PACKAGE = Cache::FastMmap::Handle

PROTOTYPES: DISABLE

void
DESTROY(obj)
    SV *obj
  PREINIT:
    SV *inner;
    FcxHandle *x;
  CODE:
    /* Never croaks: frees the engine side even if the Perl layer's own
     * cleanup never ran (die in new, global destruction, ...). */
    if (SvROK(obj)) {
        inner = SvRV(obj);
        if (SvIOK(inner) && SvIVX(inner)) {
            x = INT2PTR(FcxHandle *, SvIVX(inner));
            sv_setiv(inner, 0);
            fcx_free(aTHX_ x);
        }
    }

int
CLONE_SKIP(...)
  CODE:
    /* A new ithread must not get a copy of a live handle: both interpreters
     * would fc_close the same pointer.  With CLONE_SKIP the thread's copy is
     * an unblessed, empty reference, so its DESTROY never runs. */
    PERL_UNUSED_VAR(items);
    RETVAL = 1;
  OUTPUT:
    RETVAL
