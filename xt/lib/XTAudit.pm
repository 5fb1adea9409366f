package XTAudit;

# Server-side consistency checks for the xt/ server tests.  Loaded INSIDE the
# servers (mod_perl, Starman, Net::Server), so it has no dependencies beyond
# core Perl and never touches Test::More.
#
# The example servers in eg/ all follow one scheme: a hit on counter NAME
# does  $n = get_and_set("count:NAME", +1)  and then stores "req:NAME:$n".
# If every increment was atomic, the keys req:NAME:1 .. req:NAME:N all exist
# (N = final counter); a lost or duplicated increment shows up as N being
# too small, or as a missing key.

use strict;
use warnings;

# audit($cache, $name) -> "count=N missing=M"
sub audit {
    my ($cache, $name) = @_;
    my $n = $cache->get("count:$name") // 0;
    my $missing = 0;
    for my $i (1 .. $n) {
        my $v = $cache->get("req:$name:$i");
        $missing++ unless defined $v && $v =~ /^\Q$i\E by \d+\z/;
    }
    return "count=$n missing=$missing";
}

# build_report($cache) -> lines describing which Cache::FastMmap got loaded,
# this process, and the pid that created $cache (optional).
sub build_report {
    my ($cache) = @_;
    my @so = grep { m{/auto/Cache/FastMmap/FastMmap\.[^/]+\z} }
        @DynaLoader::dl_shared_objects;
    return join '',
        'impl=', ($Cache::FastMmap::IMPLEMENTATION // 'undef'), "\n",
        'pm=', ($INC{'Cache/FastMmap.pm'} // 'undef'), "\n",
        'so=', ($so[-1] // 'undef'), "\n",
        "pid=$$\n",
        'owner=', ($cache && defined $cache->{pid} ? $cache->{pid} : 'undef'), "\n";
}

1;
