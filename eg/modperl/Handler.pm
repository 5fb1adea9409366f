package FastMmapDemo::Handler;

# A mod_perl 2 response handler: every Apache child shares one
# Cache::FastMmap, created once in the parent by startup.pl (before Apache
# forks its children), so all of them see the same counters.
#
#   GET /count?name=foo          count one hit on "foo", answer "ok"
#   GET /count?name=foo&show=1   answer "foo <hits so far>"
#
# Each hit also stores a per-request key "req:foo:<n>" (n = this hit's
# number) and reads it back.  See startup.pl for the httpd.conf lines.

use strict;
use warnings;

use Apache2::RequestRec ();
use Apache2::RequestIO ();
use Apache2::Log ();
use Apache2::Const -compile => qw(OK SERVER_ERROR);
use Cache::FastMmap ();

our $Cache;    # set by startup.pl

sub handler {
    my $r = shift;
    my %q;
    for (split /[&;]/, $r->args // '') {
        my ($k, $v) = split /=/, $_, 2;
        $q{$k} = $v // '';
    }
    my $name = ($q{name} // 'hits') =~ s/[^\w.-]//gr;

    if ($q{show}) {
        $r->content_type('text/plain');
        $r->print("$name ", $Cache->get("count:$name") // 0, "\n");
        return Apache2::Const::OK;
    }

    # Atomic read-modify-write: the page stays locked while the sub runs,
    # so concurrent children never lose an increment.
    my $n = $Cache->get_and_set("count:$name", sub { ($_[1] // 0) + 1 });

    my $key = "req:$name:$n";
    my $val = "$n by $$";
    $Cache->set($key, $val);
    my $got = $Cache->get($key);
    if (!defined $got || $got ne $val) {
        $r->log_error("FastMmapDemo: $key read back as "
            . ($got // 'undef') . ", expected $val");
        return Apache2::Const::SERVER_ERROR;
    }

    $r->content_type('text/plain');
    $r->print("ok\n");
    return Apache2::Const::OK;
}

1;
