# Real mod_perl 2 under a private Apache 2 (prefork, worker and event MPMs): the example
# eg/modperl/startup.pl opens one cache in the Apache parent before it forks,
# the example handler eg/modperl/Handler.pm counts hits with get_and_set and
# stores/reads a per-request key.  Driven by ab (with and without
# keep-alive) and by forked HTTP::Tiny clients, then: no 5xx, counters
# exactly equal successful requests, every per-request key present, nothing
# in error_log, and the children (recycled by MaxConnectionsPerChild) never
# removed the parent's file.  mod_perl also unloads and reloads our XS
# library at start-up (SPEC 6), so merely serving requests proves that works.
#
# Never touches the system Apache: own ServerRoot, config, logs, PidFile,
# mutexes in a temp dir; listens on 127.0.0.1 only.

use strict;
use warnings;

use lib 't/lib';
use FMTest;
use lib 'xt/lib';
use XTServer;

use Test::More;
use File::Temp ();

XTServer::time_limit(1200);

my $ROOT    = XTServer::ROOT();
my $moddir  = '/usr/lib/apache2/modules';
my $httpd   = XTServer::find_program('apache2') // XTServer::find_program('httpd');
XTServer::need('Apache 2 (Debian package apache2)', $httpd);
XTServer::need('mod_perl 2 (Debian package libapache2-mod-perl2)', -f "$moddir/mod_perl.so");
XTServer::need("the $_ MPM", -f "$moddir/mod_mpm_$_.so") for qw(prefork worker event);
my $ab = XTServer::find_program('ab');
XTServer::need('ab (Debian package apache2-utils)', $ab);
XTServer::need('HTTP::Tiny', XTServer::have_module('HTTP::Tiny'));
XTServer::need('a built blib/ (run make first)',
    -d "$ROOT/blib/arch/auto/Cache/FastMmap");

# The same checks under each MPM: prefork forks single-threaded children;
# worker and event (Debian's default) run threads in each child, each with
# its own Perl interpreter cloned from the parent's, so the cache object
# opened at startup is cloned into every interpreter (CLONE).
my %MPM_CONF = (
    prefork => "StartServers 3\nMinSpareServers 2\nMaxSpareServers 6\n"
             . "MaxRequestWorkers 12\nServerLimit 12\n",
    worker  => "StartServers 2\nServerLimit 4\nThreadsPerChild 8\nMinSpareThreads 8\n"
             . "MaxSpareThreads 24\nMaxRequestWorkers 32\n",
    event   => "StartServers 2\nServerLimit 4\nThreadsPerChild 8\nMinSpareThreads 8\n"
             . "MaxSpareThreads 24\nMaxRequestWorkers 32\n",
);
my ($dir, $share, $port, $base, $pid);

plan tests => scalar keys %MPM_CONF;
for my $mpm (qw(prefork worker event)) {
    subtest("$mpm MPM", sub { run_mpm($mpm) });
}

sub run_mpm {
    my ($mpm) = @_;
    $dir = File::Temp::tempdir("xt-modperl-$mpm-XXXXXX", TMPDIR => 1, CLEANUP => 1);
    chmod 0755, $dir;
    $share = "$dir/cache";
    $port  = XTServer::free_port();
    $base  = "http://127.0.0.1:$port";

    # Apache refuses to serve requests as root: children run as nobody then.
    my $user = '';
    if ($> == 0) {
        my @pw = getpwnam('nobody');
        my ($uid, $gid) = @pw ? @pw[2, 3] : (65534, 65534);
        $user = "User #$uid\nGroup #$gid\n";
    }

    my @inc = map { s/^-I//r } XTServer::perl_inc();
    my $conf = <<"CONF";
    ServerRoot "$dir"
    ServerName 127.0.0.1
    Listen 127.0.0.1:$port
    PidFile "$dir/httpd.pid"
    DefaultRuntimeDir "$dir"
    Mutex file:$dir default
    ScoreBoardFile "$dir/scoreboard"
    ErrorLog "$dir/error_log"
    LogLevel notice
    $user
    LoadModule mpm_${mpm}_module $moddir/mod_mpm_$mpm.so
    LoadModule authn_core_module  $moddir/mod_authn_core.so
    LoadModule authz_core_module  $moddir/mod_authz_core.so
    LoadModule perl_module        $moddir/mod_perl.so

    $MPM_CONF{$mpm}MaxConnectionsPerChild 150
    KeepAlive On
    MaxKeepAliveRequests 50
    Timeout 30

    PerlSwitches -I$inc[0] -I$inc[1] -I$inc[2]
    PerlSetVar FastMmapShareFile $share
    PerlSetVar XTStartLog $dir/perl-starts
    PerlPostConfigRequire $ROOT/eg/modperl/startup.pl
    PerlModule XTModPerlCheck

    <Location />
        Require all granted
    </Location>
    <Location /count>
        SetHandler modperl
        PerlResponseHandler FastMmapDemo::Handler
    </Location>
    <Location /xt>
        SetHandler modperl
        PerlResponseHandler XTModPerlCheck
    </Location>
CONF
    open my $fh, '>', "$dir/httpd.conf" or die $!;
    print {$fh} $conf;
    close $fh;

    plan tests => 35;

    $pid = XTServer::spawn(
        name => 'apache2',
        cmd  => [$httpd, '-d', $dir, '-f', "$dir/httpd.conf", '-DFOREGROUND'],
        log  => "$dir/stderr.log",
    );
    my ($up, $why) = XTServer::wait_port($port, 60, $pid);
    ok($up, "private Apache (pid $pid) listens on 127.0.0.1:$port") or do {
        diag($why);
        diag_file("$dir/stderr.log");
        diag_file("$dir/error_log");
        BAIL_OUT("Apache ($mpm MPM) with mod_perl did not start");
    };

    # --- which Cache::FastMmap the children run (several requests: several children)
    my ($checks_ok, $seen) = XTServer::survey_check($base, 8);
    my ($impl, $pm, $so, $pids, $owner) = @$seen{qw(impl pm so pid owner)};
    my (%impl, %pm, %so, %pids, %owner) = ();
    %impl = %$impl; %pm = %$pm; %so = %$so; %pids = %$pids; %owner = %$owner;
    ok($checks_ok, '/xt/check answers');
    is(join(',', keys %impl), 'rust', 'mod_perl children run the Rust-core Cache::FastMmap');
    ok((grep { index($_, "$ROOT/blib/lib/") == 0 } keys %pm) == keys %pm && %pm,
        'Cache/FastMmap.pm comes from our blib/lib') or diag(join ', ', keys %pm);
    ok((grep { index($_, "$ROOT/blib/arch/") == 0 } keys %so) == keys %so && %so,
        'FastMmap.so comes from our blib/arch') or diag(join ', ', keys %so);
    is(join(',', keys %owner), $pid, 'the cache was created by the Apache parent (startup.pl)');
    ok(!$pids{$pid} && %pids, 'and is used by its forked children');
    my @starts = starts();
    cmp_ok(scalar(grep { $_ == $pid } @starts), '>=', 2,
        'mod_perl started Perl (and loaded our XS) more than once in the parent')
        or diag("starts: @starts");
    note('children seen: ' . join(' ', sort keys %pids));

    # --- load
    my $r = XTServer::ab_load($ab, "$base/count?name=ab", 3000, 24, 0);
    is($r->{complete}, 3000, 'ab: 3000 requests complete (24 concurrent, no keep-alive)')
        or diag($r->{output});
    is($r->{failed}, 0, 'ab: no failed requests');
    is($r->{non2xx}, 0, 'ab: no non-2xx responses');
    is(counter('ab'), $r->{complete} - $r->{failed} - $r->{non2xx},
        'counter "ab" equals the successful requests');
    is(audit('ab'), "count=3000 missing=0", 'every per-request key of "ab" is there');

    $r = XTServer::ab_load($ab, "$base/count?name=abk", 2000, 16, 1);
    is($r->{complete}, 2000, 'ab -k: 2000 requests complete (16 concurrent, keep-alive)')
        or diag($r->{output});
    is($r->{failed}, 0, 'ab -k: no failed requests');
    is($r->{non2xx}, 0, 'ab -k: no non-2xx responses');
    is(counter('abk'), 2000, 'counter "abk" equals the successful requests');
    is(audit('abk'), "count=2000 missing=0", 'every per-request key of "abk" is there');

    # Forked HTTP::Tiny clients, each hitting its own counter and a shared one.
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

    ok(-f $share, 'share file still exists: recycled children did not remove it');

    # --- restart (SIGHUP): Apache re-reads its config, mod_perl tears Perl down
    # in the parent and starts it again, startup.pl creates a fresh cache.
    kill 'HUP', $pid;
    my $deadline = time + 60;
    my ($st_after, $check_after) = (0, '');
    while (time < $deadline) {
        if (starts() > @starts) {
            ($st_after, $check_after) = XTServer::http_get("$base/xt/check");
            last if $st_after == 200 && $check_after =~ /^impl=rust$/m;
        }
        select(undef, undef, undef, 0.2);
    }
    cmp_ok(scalar(starts()), '>', scalar(@starts), 'SIGHUP restart started Perl again in the parent');
    like($check_after, qr/^impl=rust\n/, 'children after the restart run our build again');
    is(counter('ab'), 0, 'startup.pl ran again: a fresh cache (init_file), old counters gone');
    $r = XTServer::ab_load($ab, "$base/count?name=after", 1000, 16, 0);
    is($r->{complete} - $r->{failed} - $r->{non2xx}, 1000, 'ab after the restart: 1000 successful requests')
        or diag($r->{output});
    is(audit('after'), "count=1000 missing=0", 'counter and per-request keys exact after the restart');

    # --- stop Apache by the PID we started
    my $st = XTServer::stop($pid, 30);
    ok(defined $st, "Apache (pid $pid) exited after SIGTERM") or diag('had to SIGKILL it');
    is(XTServer::describe($st // -1), 'exit 0', 'Apache exited cleanly');
    ok(!XTServer::group_alive($pid), 'no Apache process left');

    # --- error_log: notices only, no Perl warnings or errors
    my @bad = log_problems("$dir/error_log");
    is(scalar(@bad), 0, 'error_log has no warnings or errors') or diag(join '', @bad);
    my @err = log_problems("$dir/stderr.log");
    is(scalar(@err), 0, 'nothing on Apache stderr') or diag(join '', @err);
}

sub counter { XTServer::http_counter($base, @_) }
sub audit   { XTServer::http_audit($base, @_) }

sub starts {
    open my $sf, '<', "$dir/perl-starts" or return ();
    return grep { $_ == $pid } map { chomp; $_ } <$sf>;
}

sub log_problems {
    my ($file) = @_;
    open my $lf, '<', $file or return ();
    # Apache's own lines look like "[date] [module:level] [pid N] message";
    # anything else (a Perl warning or die) or any level above notice counts.
    return grep {
        !/^\[[^\]]+\] \[[\w.]*:(?:notice|info|debug|trace\d)\] /
    } <$lf>;
}

sub diag_file {
    my ($file) = @_;
    open my $lf, '<', $file or return;
    local $/;
    diag("--- $file:\n" . (<$lf> // ''));
}
