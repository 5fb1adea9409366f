package XTModPerlCheck;

# Test-only mod_perl handler used by xt/modperl.t next to the example
# handler eg/modperl/Handler.pm:
#   /xt/check          which Cache::FastMmap this child runs (see XTAudit)
#   /xt/audit?NAME     XTAudit::audit on the example's shared cache

use strict;
use warnings;

use Apache2::RequestRec ();
use Apache2::RequestIO ();
use Apache2::Const -compile => qw(OK NOT_FOUND);
use Apache2::ServerUtil ();
use XTAudit ();

# Record every start of a Perl interpreter in the Apache parent: mod_perl
# starts one, destroys it (unloading the XS libraries) and starts another
# during Apache's start-up, and modperl.t checks that this happened.
if (my $log = Apache2::ServerUtil->server->dir_config('XTStartLog')) {
    open my $fh, '>>', $log or die "XTModPerlCheck: $log: $!";
    print {$fh} "$$\n";
    close $fh;
}

sub handler {
    my $r = shift;
    my $uri = $r->uri;
    my $body;
    if ($uri eq '/xt/check') {
        $body = XTAudit::build_report($FastMmapDemo::Handler::Cache);
    }
    elsif ($uri eq '/xt/audit') {
        my $cache = $FastMmapDemo::Handler::Cache
            or return Apache2::Const::NOT_FOUND;
        $body = XTAudit::audit($cache, $r->args // '') . "\n";
    }
    else {
        return Apache2::Const::NOT_FOUND;
    }
    $r->content_type('text/plain');
    $r->print($body);
    return Apache2::Const::OK;
}

1;
