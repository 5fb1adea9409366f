package XTServer;

# Shared helper for the xt/ server tests (real mod_perl, Starman,
# Net::Server): find a free port on 127.0.0.1, start a server in its own
# process group, wait for its port, stop it by the PID we started (and kill
# its whole process group if it does not go away), drive it with forked
# HTTP clients, and enforce an overall time limit.  Every process started
# through spawn() is stopped by an END block even when the test dies.
#
# Load it after FMTest (which guards that our build is the one tested).

use strict;
use warnings;

use Cwd ();
use File::Basename ();
use File::Spec ();
use IO::Socket::INET ();
use POSIX ();
use Test::More ();
use Time::HiRes ();

our $ROOT;
sub ROOT { $ROOT }
BEGIN {
    my $here = File::Basename::dirname(Cwd::abs_path(__FILE__));
    $ROOT = Cwd::abs_path(File::Spec->catdir($here, File::Spec->updir, File::Spec->updir));
}

my $OWNER = $$;
my %STARTED;    # pid => name, process-group leaders we spawned
my %HELPERS;    # pid => 1, client processes (ab, forked HTTP clients)

# Perl switches that make a server process load THIS build (blib) first,
# plus xt/lib for the test-side helpers.
sub perl_inc {
    return ("-I$ROOT/blib/lib", "-I$ROOT/blib/arch", "-I$ROOT/xt/lib");
}

# need($what, $ok): skip the whole file when something is missing, but fail
# when $ENV{FASTMMAP_CI} is set (CI installs everything).
sub need {
    my ($what, $ok) = @_;
    return 1 if $ok;
    if ($ENV{FASTMMAP_CI}) {
        Test::More::plan(tests => 1);
        Test::More::fail("$what is missing, and FASTMMAP_CI is set");
        exit 1;
    }
    Test::More::plan(skip_all => "$what is missing");
    exit 0;
}

# want($what, $ok): for a part of a test that needs something optional:
#     skip "$what is missing", $n unless XTServer::want($what, $ok);
# True when $ok; otherwise false, and under FASTMMAP_CI also a failure.
sub want {
    my ($what, $ok) = @_;
    return 1 if $ok;
    Test::More::fail("$what is missing, and FASTMMAP_CI is set") if $ENV{FASTMMAP_CI};
    return 0;
}

sub have_module {
    my ($mod) = @_;
    return eval "require $mod; 1" ? 1 : 0;
}

# installed($module): is it in @INC? (without loading it)
sub installed {
    my ($mod) = @_;
    (my $file = "$mod.pm") =~ s{::}{/}g;
    return scalar grep { !ref($_) && -f "$_/$file" } @INC;
}

sub find_program {
    my ($name, @extra_dirs) = @_;
    for my $d (split(/:/, $ENV{PATH} // ''), @extra_dirs, '/usr/sbin', '/usr/bin') {
        next unless length $d;
        my $p = "$d/$name";
        return $p if -f $p && -x _;
    }
    return undef;
}

# time_limit($seconds): on expiry, fail, stop every server, exit non-zero.
sub time_limit {
    my ($secs) = @_;
    $SIG{ALRM} = sub {
        return unless $$ == $OWNER;
        Test::More::fail("overall time limit of ${secs}s exceeded");
        stop_all();
        exit 255;
    };
    alarm $secs;
}

# free_port() -> a TCP port on 127.0.0.1 that was free a moment ago.
sub free_port {
    my $s = IO::Socket::INET->new(
        LocalAddr => '127.0.0.1', LocalPort => 0, Proto => 'tcp',
        Listen => 1, ReuseAddr => 1,
    ) or die "cannot bind 127.0.0.1: $!";
    my $port = $s->sockport;
    close $s;
    return $port;
}

# spawn(name => ..., cmd => [...], log => $file, env => {...}, dir => $dir)
# Forks, puts the child in its own process group, sends stdout+stderr to
# the log, execs the command.  Returns the pid.
sub spawn {
    my %o = @_;
    my $pid = fork;
    die "fork: $!" unless defined $pid;
    if (!$pid) {
        POSIX::setpgid(0, 0);
        $SIG{ALRM} = 'DEFAULT';
        alarm 0;
        open STDIN, '<', '/dev/null';
        if ($o{log}) {
            open STDOUT, '>>', $o{log} or POSIX::_exit(126);
            open STDERR, '>&', \*STDOUT or POSIX::_exit(126);
        }
        $ENV{$_} = $o{env}{$_} for keys %{ $o{env} || {} };
        chdir $o{dir} if $o{dir};
        { no warnings 'exec'; exec { $o{cmd}[0] } @{ $o{cmd} }; }
        print STDERR "exec $o{cmd}[0]: $!\n";
        POSIX::_exit(127);
    }
    POSIX::setpgid($pid, $pid);    # also from the parent: no race with kill
    $STARTED{$pid} = $o{name} // $o{cmd}[0];
    return $pid;
}

sub _reap {
    my ($pid, $timeout) = @_;
    my $end = Time::HiRes::time() + $timeout;
    while (1) {
        my $r = waitpid($pid, POSIX::WNOHANG());
        return $? if $r == $pid;
        return -1 if $r == -1;
        return undef if Time::HiRes::time() >= $end;
        Time::HiRes::sleep(0.05);
    }
}

# wait_port($port, $timeout, $pid) -> (1) or (0, $why).  Fails early when
# $pid exits before the port answers.
sub wait_port {
    my ($port, $timeout, $pid) = @_;
    my $end = Time::HiRes::time() + $timeout;
    while (Time::HiRes::time() < $end) {
        if ($pid && (my $r = waitpid($pid, POSIX::WNOHANG())) == $pid) {
            my $st = $?;
            delete $STARTED{$pid};
            return (0, "server exited (" . describe($st) . ") before listening");
        }
        my $s = IO::Socket::INET->new(
            PeerAddr => '127.0.0.1', PeerPort => $port, Proto => 'tcp', Timeout => 1);
        if ($s) { close $s; return (1) }
        Time::HiRes::sleep(0.1);
    }
    return (0, "nothing listening on 127.0.0.1:$port after ${timeout}s");
}

sub describe {
    my ($st) = @_;
    return 'not reaped' if !defined $st || $st == -1;
    return 'signal ' . ($st & 127) if $st & 127;
    return 'exit ' . ($st >> 8);
}

# stop($pid, $timeout, $signal) -> wait status of $pid (undef if it had to
# be SIGKILLed).  Sends $signal (TERM) to the pid we started, waits, then
# SIGKILLs whatever is left of its process group.
sub stop {
    my ($pid, $timeout, $sig) = @_;
    $timeout //= 20;
    $sig //= 'TERM';
    return undef unless delete $STARTED{$pid};
    kill $sig, $pid;
    my $st = _reap($pid, $timeout);
    if (!defined $st) {
        Test::More::diag("pid $pid did not exit ${timeout}s after SIG$sig: SIGKILL to its group");
        kill 'KILL', -$pid;
        _reap($pid, 10);
    }
    # Children that outlived their parent (same process group): give them a
    # moment to finish exiting, then SIGKILL them.
    my $end = Time::HiRes::time() + 3;
    Time::HiRes::sleep(0.1) while kill(0, -$pid) && Time::HiRes::time() < $end;
    if (kill 0, -$pid) {
        Test::More::diag("processes of group $pid outlived it: SIGKILL");
        kill 'KILL', -$pid;
        $end = Time::HiRes::time() + 5;
        Time::HiRes::sleep(0.1) while kill(0, -$pid) && Time::HiRes::time() < $end;
    }
    return $st;
}

sub group_alive { my ($pid) = @_; return kill(0, -$pid) ? 1 : 0 }

sub stop_all {
    return unless $$ == $OWNER;
    for my $pid (keys %HELPERS) {
        kill 'KILL', $pid;
        waitpid($pid, 0);
    }
    %HELPERS = ();
    stop($_, 10) for keys %STARTED;
}

END {
    my $rc = $?;
    stop_all();
    $? = $rc;
}

# ------------------------------------------------------------------ clients

# http_get($url) -> ($status, $content)
sub http_get {
    my ($url) = @_;
    require HTTP::Tiny;
    my $res = HTTP::Tiny->new(timeout => 30)->get($url);
    return ($res->{status}, $res->{content});
}

# http_load(clients => C, requests => R, url => sub { ($client, $i) -> url },
#           timeout => T) -> { status => count, ... , _errors => [..] }
# C forked clients (HTTP::Tiny, keep-alive) each send R requests.
# Asks /xt/check $n times (several requests reach several workers) and
# tallies what the workers report: implementation, .pm and .so paths, their
# pids and the pid that created the cache.  Returns (ok, \%seen) where
# $seen{impl}{rust} counts answers, and so on for pm, so, pid and owner.
sub survey_check {
    my ($base, $n) = @_;
    my %seen = map { $_ => {} } qw(impl pm so pid owner);
    for (1 .. $n) {
        my ($st, $body) = http_get("$base/xt/check");
        if ($st != 200) {
            Test::More::diag("/xt/check: $st " . ($body // ''));
            return (0, \%seen);
        }
        my %kv = $body =~ /^(\w+)=(.*)$/mg;
        $seen{$_}{ $kv{$_} // '' }++ for keys %seen;
    }
    return (1, \%seen);
}

# The /count?name=NAME&show=1 counter of the example apps, or undef (with a
# diagnostic) when the server did not answer as expected.
sub http_counter {
    my ($base, $name) = @_;
    my ($st, $body) = http_get("$base/count?name=$name&show=1");
    return $1 if $st == 200 && $body =~ /^\Q$name\E (\d+)$/;
    Test::More::diag("counter $name: HTTP $st: " . ($body // ''));
    return undef;
}

# The /xt/audit?NAME verdict of XTAudit running inside the server.
sub http_audit {
    my ($base, $name) = @_;
    my ($st, $body) = http_get("$base/xt/audit?$name");
    $body //= '';
    chomp $body;
    return $st == 200 ? $body : "HTTP $st: $body";
}

sub http_load {
    my %o = @_;
    require HTTP::Tiny;
    require FMTest;
    my (@pids, %pipe);
    for my $c (1 .. $o{clients}) {
        pipe(my $r, my $w) or die "pipe: $!";
        my $pid = FMTest::fork_child($o{timeout}, sub {
            close $r;
            my $ua = HTTP::Tiny->new(timeout => 30, keep_alive => 1);
            my (%n, $err);
            for my $i (1 .. $o{requests}) {
                my $res = $ua->get($o{url}->($c, $i));
                $n{ $res->{status} }++;
                if (!$res->{success} && !defined $err) {
                    ($err = "$res->{status} $res->{reason}: " . ($res->{content} // ''))
                        =~ s/\s+/ /g;
                }
            }
            print {$w} "$_ $n{$_}\n" for sort keys %n;
            print {$w} "E $err\n" if defined $err;
            close $w;
            return 0;
        });
        close $w;
        push @pids, $pid;
        $HELPERS{$pid} = 1;
        $pipe{$pid} = $r;
    }
    my %total = (_errors => []);
    # Each client writes a few short lines only, so reading after the
    # children exit cannot block.
    my $st = FMTest::wait_children($o{timeout} + 10, @pids);
    delete @HELPERS{@pids};
    for my $pid (@pids) {
        my $fh = $pipe{$pid};
        while (my $line = <$fh>) {
            chomp $line;
            if ($line =~ /^E (.*)/) { push @{ $total{_errors} }, substr($1, 0, 300) }
            elsif ($line =~ /^(\d+) (\d+)$/) { $total{$1} += $2 }
        }
        close $fh;
        push @{ $total{_errors} }, "client $pid: " . describe($st->{$pid})
            if $st->{$pid};
    }
    return \%total;
}

# ab_load($ab, $url, $n, $c, $keepalive) -> { complete, failed, non2xx, output }
sub ab_load {
    my ($ab, $url, $n, $c, $ka, $timeout) = @_;
    $timeout //= 120;
    my @cmd = ($ab, '-q', '-s', 30, '-n', $n, '-c', $c, ($ka ? '-k' : ()), $url);
    my $out = '';
    my $pid = open(my $fh, '-|') // die "fork: $!";
    if (!$pid) {
        $SIG{ALRM} = 'DEFAULT';
        alarm $timeout;    # the default action kills ab if it hangs
        open STDERR, '>&', \*STDOUT;
        { no warnings 'exec'; exec @cmd; }
        POSIX::_exit(127);
    }
    $HELPERS{$pid} = 1;
    $out .= $_ while <$fh>;
    close $fh;
    delete $HELPERS{$pid};
    my %r = (status => $?, output => $out);
    $r{complete} = $out =~ /^Complete requests:\s+(\d+)/m ? $1 : -1;
    $r{failed}   = $out =~ /^Failed requests:\s+(\d+)/m   ? $1 : -1;
    $r{non2xx}   = $out =~ /^Non-2xx responses:\s+(\d+)/m ? $1 : 0;
    return \%r;
}

1;
