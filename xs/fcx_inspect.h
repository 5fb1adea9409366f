/*
 * fcx_inspect.h -- helpers of the STATISTICS AND INSPECTION section at the end
 * of FastMmap.xs (included there, so that the section stays self-contained).
 *
 * An inspection handle (FcInspect, see rust/inspect.rs) lives in ext magic on
 * the scalar a Cache::FastMmap::Inspect object references, like a cache
 * handle: freeing that scalar closes it.
 */

static int
fcx_insp_mg_free(pTHX_ SV *sv, MAGIC *mg)
{
    PERL_UNUSED_ARG(sv);
    if (mg->mg_ptr) {
        FcInspect *ih = (FcInspect *)mg->mg_ptr;
        mg->mg_ptr = NULL;
        fc_inspect_close(ih);
    }
    return 0;
}

static MGVTBL fcx_insp_vtbl = { NULL, NULL, NULL, NULL, fcx_insp_mg_free, NULL, NULL, NULL };

/* The inspection handle of an object, or a croak. */
static FcInspect *
fcx_insp(pTHX_ SV *self)
{
    MAGIC *mg = NULL;
    if (SvROK(self) && SvTYPE(SvRV(self)) >= SVt_PVMG)
        mg = mg_findext(SvRV(self), PERL_MAGIC_ext, &fcx_insp_vtbl);
    if (!mg || !mg->mg_ptr)
        croak("%s", "Cache::FastMmap::Inspect: not an open inspection handle");
    return (FcInspect *)mg->mg_ptr;
}
