# starman.psgi - a PSGI app whose Starman workers share one Cache::FastMmap.
#
#   FASTMMAP_SHARE_FILE=/tmp/starman.cache \
#     starman --preload-app --workers 4 --listen 127.0.0.1:5000 eg/starman.psgi
#
# With --preload-app the master loads this file, so the cache below is
# opened once, before Starman forks its workers; every worker inherits it.
# (Without --preload-app each worker would open the file by itself: then
# drop init_file, or the workers would wipe each other's data.)
#
#   GET /count?name=foo          count one hit on "foo", answer "ok"
#   GET /count?name=foo&show=1   answer "foo <hits so far>"
#
# Each hit also stores a per-request key "req:foo:<n>" and reads it back.

package FastMmapDemo::PSGI;

use strict;
use warnings;

use Cache::FastMmap;

# A package global, so that other code (e.g. a wrapping app) can reach it.
our $Cache = Cache::FastMmap->new(
    share_file => $ENV{FASTMMAP_SHARE_FILE} || "/tmp/fastmmap-starman-$$",
    init_file  => 1,          # start empty
    cache_size => '4m',
    serializer => '',         # values are plain strings
);

my $app = sub {
    my ($env) = @_;
    return [404, ['Content-Type' => 'text/plain'], ["not found\n"]]
        unless $env->{PATH_INFO} eq '/count';

    my %q;
    for (split /[&;]/, $env->{QUERY_STRING} // '') {
        my ($k, $v) = split /=/, $_, 2;
        $q{$k} = $v // '';
    }
    my $name = ($q{name} // 'hits') =~ s/[^\w.-]//gr;

    if ($q{show}) {
        my $n = $Cache->get("count:$name") // 0;
        return [200, ['Content-Type' => 'text/plain'], ["$name $n\n"]];
    }

    # Atomic read-modify-write: the page stays locked while the sub runs.
    my $n = $Cache->get_and_set("count:$name", sub { ($_[1] // 0) + 1 });

    my $key = "req:$name:$n";
    my $val = "$n by $$";
    $Cache->set($key, $val);
    my $got = $Cache->get($key);
    if (!defined $got || $got ne $val) {
        warn "starman.psgi: $key read back as ", $got // 'undef', ", expected $val\n";
        return [500, ['Content-Type' => 'text/plain'], ["error\n"]];
    }
    return [200, ['Content-Type' => 'text/plain'], ["ok\n"]];
};

$app;
