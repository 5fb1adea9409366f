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
 * holds the FcCache pointer (0 once closed). */
typedef FcCache *FcObj;

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

/* Turn $h into the engine pointer or croak with the reference's messages. */
static FcCache *
fcx_handle(pTHX_ SV *obj)
{
    SV *inner;
    FcCache *c;

    if (!SvROK(obj))
        croak("%s", "Object not reference");
    inner = SvRV(obj);
    if (!SvIOK(inner))
        croak("%s", "Object not initialised correctly");
    c = INT2PTR(FcCache *, SvIVX(inner));
    if (!c)
        croak("%s", "Object not created correctly");
    return c;
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

MODULE = Cache::FastMmap        PACKAGE = Cache::FastMmap

PROTOTYPES: ENABLE

BOOT:
    /* A caught engine panic reaches the user as a croak; keep stderr quiet. */
    fc_library_init();

SV *
fc_new()
  PREINIT:
    FcCache *c;
  CODE:
    c = fc_new();
    if (!c)
        croak("%s", "Cache::FastMmap: out of memory creating the cache handle");
    RETVAL = sv_bless(newRV_noinc(newSViv(PTR2IV(c))),
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
    FcCache *c;
  CODE:
    c = fcx_handle(aTHX_ obj);
    /* Zero the IV first: any later use croaks instead of touching freed memory. */
    sv_setiv(SvRV(obj), 0);
    fc_close(c);

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


MODULE = Cache::FastMmap        PACKAGE = Cache::FastMmap::Handle

PROTOTYPES: DISABLE

void
DESTROY(obj)
    SV *obj
  PREINIT:
    SV *inner;
    FcCache *c;
  CODE:
    /* Never croaks: frees the engine side even if the Perl layer's own
     * cleanup never ran (die in new, global destruction, ...). */
    if (SvROK(obj)) {
        inner = SvRV(obj);
        if (SvIOK(inner) && SvIVX(inner)) {
            c = INT2PTR(FcCache *, SvIVX(inner));
            sv_setiv(inner, 0);
            fc_close(c);
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
