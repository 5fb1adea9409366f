# Real Starman: the example eg/starman.psgi (wrapped with two test-only
# URLs) runs with --preload-app, so its cache is created in the master
# before the workers fork.  Workers are recycled (--max-requests).  Driven
# by forked HTTP::Tiny clients (keep-alive) and, when present, ab; then: no
# 5xx, counters exactly equal successful requests, every per-request key
# present, no warnings on stderr, clean stop.

use strict;
use warnings;

use lib 't/lib';
use FMTest;
use lib 'xt/lib';
use XTServer;

use Test::More;
use File::Temp ();

XTServer::time_limit(300);

my $ROOT    = XTServer::ROOT();
my $starman = XTServer::find_program('starman');
XTServer::need('Starman (Debian package starman)', $starman);
XTServer::need('Plack', XTServer::have_module('Plack::Util'));
XTServer::need('HTTP::Tiny', XTServer::have_module('HTTP::Tiny'));
XTServer::need('a built blib/ (run make first)',
    -d "$ROOT/blib/arch/auto/Cache/FastMmap");
my $ab = XTServer::find_program('ab');    # optional here, required in CI

my $dir   = File::Temp::tempdir('xt-starman-XXXXXX', TMPDIR => 1, CLEANUP => 1);
my $share = "$dir/cache";
my $port  = XTServer::free_port();
my $base  = "http://127.0.0.1:$port";

my $psgi = "$dir/app.psgi";
open my $fh, '>', $psgi or die $!;
print {$fh} <<"PERL";
use strict;
use warnings;
use Plack::Util ();
use XTAudit ();
my \$app = Plack::Util::load_psgi('$ROOT/eg/starman.psgi');
sub {
    my (\$env) = \@_;
    my \$cache = \$FastMmapDemo::PSGI::Cache;
    my \$body = \$env->{PATH_INFO} eq '/xt/check' ? XTAudit::build_report(\$cache)
              : \$env->{PATH_INFO} eq '/xt/audit' ? XTAudit::audit(\$cache, \$env->{QUERY_STRING}) . "\\n"
              : undef;
    return defined \$body ? [200, ['Content-Type' => 'text/plain'], [\$body]] : \$app->(\$env);
};
PERL
close $fh;

plan tests => 23;

my $pid = XTServer::spawn(
    name => 'starman',
    cmd  => [$^X, XTServer::perl_inc(), $starman,
             '--preload-app', '--workers', 4, '--max-requests', 100,
             '--listen', "127.0.0.1:$port", '-E', 'deployment', $psgi],
    env  => { FASTMMAP_SHARE_FILE => $share },
    log  => "$dir/stderr.log",
);
my ($up, $why) = XTServer::wait_port($port, 60, $pid);
ok($up, "Starman (pid $pid) listens on 127.0.0.1:$port") or do {
    diag($why);
    diag(slurp("$dir/stderr.log"));
    BAIL_OUT('Starman did not start');
};

my ($checks_ok, $seen) = XTServer::survey_check($base, 8);
my ($impl, $pm, $so, $pids, $owner) = @$seen{qw(impl pm so pid owner)};
my (%impl, %pm, %so, %pids, %owner) = ();
%impl = %$impl; %pm = %$pm; %so = %$so; %pids = %$pids; %owner = %$owner;
ok($checks_ok, '/xt/check answers');
is(join(',', keys %impl), 'rust', 'Starman workers run the Rust-core Cache::FastMmap');
ok(%pm && (grep { index($_, "$ROOT/blib/lib/") == 0 } keys %pm) == keys %pm,
    'Cache/FastMmap.pm comes from our blib/lib') or diag(join ', ', keys %pm);
ok(%so && (grep { index($_, "$ROOT/blib/arch/") == 0 } keys %so) == keys %so,
    'FastMmap.so comes from our blib/arch') or diag(join ', ', keys %so);
is(join(',', keys %owner), $pid, 'the cache was created by the Starman master (--preload-app)');
ok(%pids && !$pids{$pid}, 'and is used by its forked workers');

# Forked HTTP::Tiny clients, keep-alive: a shared counter and one per client.
my $t = XTServer::http_load(
    clients => 12, requests => 100, timeout => 180,
    url => sub { my ($c, $i) = @_; $i % 2 ? "$base/count?name=shared" : "$base/count?name=c$c" },
);
my $ok200 = $t->{200} // 0;
is($ok200, 1200, 'HTTP::Tiny: 12 clients x 100 requests all answered 200')
    or diag(explain($t));
is(scalar(grep { /^5/ } keys %$t), 0, 'HTTP::Tiny: no 5xx (or connection errors)');
my @counts = map { counter($_) } 'shared', map { "c$_" } 1 .. 12;
my $sum = 0;
$sum = defined($sum) && defined($_) ? $sum + $_ : undef for @counts;
is($sum, $ok200, 'shared + per-client counters equal the successful requests');
is(counter('shared'), 600, 'counter "shared" equals its 600 requests');
is(audit('shared'), "count=600 missing=0", 'every per-request key of "shared" is there');
is(scalar(grep { (counter("c$_") // -1) == 50 } 1 .. 12), 12, 'each per-client counter is 50');

SKIP: {
    skip 'ab (Debian package apache2-utils) is missing', 5
        unless XTServer::want('ab (Debian package apache2-utils)', $ab);
    my $r = XTServer::ab_load($ab, "$base/count?name=ab", 2000, 16, 0);
    is($r->{complete}, 2000, 'ab: 2000 requests complete (16 concurrent)') or diag($r->{output});
    is($r->{failed}, 0, 'ab: no failed requests');
    is($r->{non2xx}, 0, 'ab: no non-2xx responses');
    is(counter('ab'), $r->{complete} - $r->{failed} - $r->{non2xx},
        'counter "ab" equals the successful requests');
    is(audit('ab'), "count=2000 missing=0", 'every per-request key of "ab" is there');
}

my ($st, $body) = XTServer::http_get("$base/xt/check");
is($st, 200, 'Starman still answers after the load');
ok(-f $share, 'share file still exists: recycled workers did not remove it');

my $exit = XTServer::stop($pid, 30);
ok(defined $exit, "Starman (pid $pid) exited after SIGTERM");
ok(!XTServer::group_alive($pid), 'no Starman process left');
# Starman's own start/stop notices are fine; anything else (a warning, a
# die, the example's "read back as" message) is not.
my @bad = grep {
    s/^\d{4}\/\d\d\/\d\d-\d\d:\d\d:\d\d //;    # Net::Server's time stamp
    /\S/ && !/^Starman::Server \(type Net::Server::PreFork(?:Simple)?\) starting! pid\(\d+\)$/
         && !/^Resolved \[/ && !/^Binding to TCP port \d+ on host 127\.0\.0\.1 with IPv4$/
         && !/^Setting [gu]id to /
         && !/^Server closing!$/
} split /\n/, slurp("$dir/stderr.log");
is(scalar(@bad), 0, 'no warnings or errors on Starman\'s stderr') or diag(join "\n", @bad);

sub counter { XTServer::http_counter($base, @_) }
sub audit   { XTServer::http_audit($base, @_) }

sub slurp {
    my ($file) = @_;
    open my $lf, '<', $file or return '';
    local $/;
    return <$lf> // '';
}
