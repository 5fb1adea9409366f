#!perl
# Two tiers (issue 14): a real memcached on 127.0.0.1 as the shared cache of
# every "host", and this cache as each host's L1 through CHI's l1_cache.
# Two groups of processes stand for two hosts: each group shares one
# Cache::FastMmap file (its host's L1), both share the memcached.  Every
# step runs in a fresh process of its group with its own CHI object, and the
# memcached's own counters (cmd_get, get_hits, cmd_set) tell which tier
# served it.  What is shown (and documented in "When one machine is not
# enough" in Cache::FastMmap's POD):
#
#  1. a write reaches memcached and the writer host's L1;
#  2. a read on the same host, in another process, is served from L1
#     (memcached not asked);
#  3. a read on the other host misses its L1, is served by memcached and
#     fills that host's L1; the next read there is L1 only;
#  4. staleness: after host A writes a new value, host B keeps serving its
#     L1 copy -- without asking memcached -- while memcached has the new one;
#  5. the bound: B's L1 copy expires when the entry it copied expires (CHI
#     gives an L1 copy the expiry of the primary entry), after which B reads
#     the new value from memcached.  Checked after the expiry time has
#     passed (never a race against the clock); and the L1 files' own stats
#     show the hits they served.
use strict;
use warnings;

use lib 't/lib';
use FMTest;        # loads OUR Cache::FastMmap first: CHI then uses it
use lib 'xt/lib';
use XTServer;
use Test::More;
use IO::Socket::INET;
use File::Path ();
use Time::HiRes ();

my $pm;
BEGIN {
    XTServer::time_limit(300);
    XTServer::need('CHI (Debian package libchi-perl)', XTServer::installed('CHI'));
    XTServer::need('CHI::Driver::Memcached (Debian package libchi-driver-memcached-perl)',
        XTServer::installed('CHI::Driver::Memcached'));
    XTServer::need('Cache::Memcached (Debian package libcache-memcached-perl)',
        XTServer::installed('Cache::Memcached'));
    $pm = $INC{'Cache/FastMmap.pm'};
}
my $memcached = XTServer::find_program('memcached');
XTServer::need('memcached (Debian package memcached)', $memcached);
require CHI;

# ---- the shared tier: a memcached of our own on 127.0.0.1
my $port = XTServer::free_port();
my $log = FMTest::share_file('memcached.log');
my $mc = XTServer::spawn(
    name => 'memcached', log => $log,
    cmd  => [ $memcached, '-l', '127.0.0.1', '-p', $port, '-U', '0', '-m', '16', '-t', '1',
              ($> == 0 ? ('-u', 'root') : ()) ],
);
my ($up, $why) = XTServer::wait_port($port, 30, $mc);
ok($up, "memcached listening on 127.0.0.1:$port") or do {
    diag $why;
    diag(do { local (@ARGV, $/) = $log; <> } // '');
    done_testing;
    exit 1;
};

# memcached's own counters, over its text protocol.
sub mc_stats {
    my $s = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port,
                                  Proto => 'tcp', Timeout => 10)
        or die "connect memcached: $!";
    print $s "stats\r\n";
    my %st;
    while (defined(my $l = <$s>)) {
        last if $l =~ /^END/;
        $st{$1} = $2 if $l =~ /^STAT (\S+) (\S+)/;
    }
    close $s;
    return \%st;
}

# ---- the hosts: one L1 directory (one Cache::FastMmap file) per host
my %root = map { $_ => FMTest::tmpdir() . "/host-$_" } qw(A B);
File::Path::mkpath([ values %root ]);

sub chi_for {
    my ($host, %extra) = @_;
    return CHI->new(
        driver     => 'Memcached',
        servers    => [ "127.0.0.1:$port" ],
        namespace  => 'tier',
        expires_in => '1 hour',
        l1_cache   => { driver => 'FastMmap', root_dir => $root{$host},
                        cache_size => '1m', page_size => '64k' },
        %extra,
    );
}

# on($host, sub { my $chi = shift; ... return $string }) runs the code in a
# new process of that host (its own CHI object) and returns its answer.
sub on {
    my ($host, $code) = @_;
    pipe(my $r, my $w) or die "pipe: $!";
    my $pid = FMTest::fork_child(60, sub {
        close $r;
        my $chi = chi_for($host);
        # Our build, not an installed copy, is CHI's L1.
        die "L1 is not this build's Cache::FastMmap\n"
            unless $INC{'Cache/FastMmap.pm'} eq $pm
                && ref($chi->l1_cache->fm_cache) eq 'Cache::FastMmap';
        my $answer = $code->($chi);
        print $w defined $answer ? "=$answer" : 'undef';
        close $w;
        return 0;
    });
    close $w;
    my $got = do { local $/; <$r> };
    close $r;
    my $st = FMTest::wait_children(90, $pid)->{$pid};
    is(FMTest::describe_status($st), 'exit 0', "a process of host $host");
    return undef if !defined $got || $got eq 'undef';
    return $got =~ /\A=(.*)\z/s ? $1 : "garbled: $got";
}

# delta(sub {...}) -> (result, {counter => increase}) for memcached.
sub delta {
    my ($code) = @_;
    my $before = mc_stats();
    my $r = $code->();
    my $after = mc_stats();
    return ($r, { map { $_ => $after->{$_} - $before->{$_} } qw(cmd_get get_hits cmd_set) });
}

# 1. A writes.
my ($r, $d) = delta(sub { on(A => sub { $_[0]->set(greeting => 'v1'); 'done' }) });
is($r, 'done', 'host A sets greeting = v1');
is($d->{cmd_set}, 1, '1. the write reached memcached');
my $primary_only = sub { CHI->new(driver => 'Memcached', servers => [ "127.0.0.1:$port" ],
                                  namespace => 'tier')->get($_[0]) };
is($primary_only->('greeting'), 'v1', '... memcached (without any L1) has v1');

# 2. Same host, another process: from L1.
($r, $d) = delta(sub { on(A => sub { $_[0]->get('greeting') }) });
is($r, 'v1', '2. another process of host A reads v1');
is($d->{cmd_get}, 0, '... from its host\'s L1: memcached was not asked');

# 3. The other host: memcached once, then L1.
($r, $d) = delta(sub { on(B => sub { $_[0]->get('greeting') }) });
is($r, 'v1', '3. host B reads v1');
is($d->{get_hits}, 1, '... from memcached (its L1 was empty)');
($r, $d) = delta(sub { on(B => sub { $_[0]->get('greeting') }) });
is($r, 'v1', '... and again, in another process of host B');
is($d->{cmd_get}, 0, '... now from host B\'s L1');

# 4. Staleness: A writes v2; B's L1 still serves v1.
($r, $d) = delta(sub { on(A => sub { $_[0]->set(greeting => 'v2'); $_[0]->get('greeting') }) });
is($r, 'v2', '4. host A writes v2 and reads it back');
is($d->{cmd_set}, 1, '... the write reached memcached');
is($primary_only->('greeting'), 'v2', '... which has v2');
($r, $d) = delta(sub { on(B => sub { $_[0]->get('greeting') }) });
is($r, 'v1', 'host B still reads v1: its L1 copy is stale');
is($d->{cmd_get}, 0, '... served from L1 without asking memcached');

# 5. The bound: an L1 copy lives as long as the entry it copied.
my $exp = time() + 3;
on(A => sub { $_[0]->set(news => 'old', { expires_at => $exp }); 'ok' });
is(on(B => sub { $_[0]->get('news') }), 'old', '5. host B copies news (expires in 3 s) into its L1');
my $l1_exp = on(B => sub { $_[0]->l1_cache->get_object('news')->expires_at });
is($l1_exp, $exp, 'the L1 copy expires when the entry it copied does');
on(A => sub { $_[0]->set(news => 'new', { expires_in => '1 hour' }); 'ok' });
my $seen = on(B => sub { $_[0]->get('news') });
ok($seen eq 'old' || time() >= $exp,
   "before that time, host B serves the old value from L1 (got '$seen')");
# Wait (bounded) until the copy's expiry has passed, by the clock both hosts share.
my $deadline = Time::HiRes::time() + 30;
Time::HiRes::sleep(0.2) while time() <= $exp && Time::HiRes::time() < $deadline;
cmp_ok(time(), '>', $exp, 'the expiry time has passed');
($r, $d) = delta(sub { on(B => sub { $_[0]->get('news') }) });
is($r, 'new', 'after it, host B reads the new value');
is($d->{get_hits}, 1, '... from memcached');

# The L1 files saw it all: their own stats count the hits they served.
for my $host (qw(A B)) {
    my $fm = chi_for($host)->l1_cache->fm_cache;
    my $s = $fm->stats;
    cmp_ok($s->{hits}, '>=', 1, "host ${host}'s L1 file counts the hits it served ($s->{hits})");
    cmp_ok($s->{entries}, '>=', 1, "host ${host}'s L1 holds entries ($s->{entries})");
}

XTServer::stop($mc, 10);
done_testing;
