# Real Net::Server::PreFork: the example eg/netserver.pl opens the cache in
# pre_loop_hook (parent, after bind, before the children fork) and speaks a
# line protocol (GET/SET/INCR).  Many concurrent clients, reconnecting so
# that children are recycled (max_requests), then exact totals, every
# per-request key present, nothing on the server's stderr, and a clean stop.

use strict;
use warnings;

use lib 't/lib';
use FMTest;
use lib 'xt/lib';
use XTServer;

use Test::More;
use File::Temp ();
use IO::Socket::INET ();

XTServer::time_limit(300);

my $ROOT = XTServer::ROOT();
XTServer::need('Net::Server::PreFork (Debian package libnet-server-perl)',
    XTServer::have_module('Net::Server::PreFork'));
XTServer::need('a built blib/ (run make first)',
    -d "$ROOT/blib/arch/auto/Cache/FastMmap");

my $dir   = File::Temp::tempdir('xt-netserver-XXXXXX', TMPDIR => 1, CLEANUP => 1);
my $share = "$dir/cache";
my $port  = XTServer::free_port();
my $gid   = (split ' ', $))[0];

# The example plus two test-only commands (CHECK, AUDIT), as a subclass.
my $script = "$dir/server.pl";
open my $fh, '>', $script or die $!;
print {$fh} <<"PERL";
use strict;
use warnings;
require '$ROOT/eg/netserver.pl';
package XTNetServer;
our \@ISA = ('FastMmapDemo::NetServer');
use XTAudit ();
sub cmd_check { join ' ', split /\\n/, XTAudit::build_report(\$_[0]{cache}) }
sub cmd_audit { XTAudit::audit(\$_[0]{cache}, \$_[1]) }
XTNetServer->run(
    host => '127.0.0.1', port => $port, ipv => 4, proto => 'tcp',
    user => $>, group => $gid,
    min_servers => 3, min_spare_servers => 1, max_spare_servers => 5,
    max_servers => 8, max_requests => 20,
    share_file => '$share', log_level => 1,
);
PERL
close $fh;

plan tests => 18;

my $pid = XTServer::spawn(
    name => 'netserver',
    cmd  => [$^X, XTServer::perl_inc(), $script],
    log  => "$dir/stderr.log",
);
my ($up, $why) = XTServer::wait_port($port, 60, $pid);
ok($up, "Net::Server::PreFork (pid $pid) listens on 127.0.0.1:$port") or do {
    diag($why);
    diag(slurp("$dir/stderr.log"));
    BAIL_OUT('Net::Server did not start');
};

my $check = talk('CHECK build');
like($check, qr/^impl=rust pm=/, 'children run the Rust-core Cache::FastMmap') or diag($check);
my ($pm) = $check =~ /pm=(\S+)/;
my ($so) = $check =~ /so=(\S+)/;
ok(defined $pm && index($pm, "$ROOT/blib/lib/") == 0, 'Cache/FastMmap.pm comes from our blib/lib') or diag($check);
ok(defined $so && index($so, "$ROOT/blib/arch/") == 0, 'FastMmap.so comes from our blib/arch') or diag($check);
my ($served_by, $owner) = $check =~ /pid=(\d+) owner=(\d+)/;
is($owner, $pid, 'the cache was created by the server parent (pre_loop_hook)');
isnt($served_by, $pid, 'and used by a forked child');

is(talk('GET nothing'), 'NONE', 'GET of a missing key');
is(talk('SET greeting hello world'), 'OK', 'SET');
is(talk('GET greeting'), 'VALUE hello world', 'GET reads it back');

# 12 clients x 25 connections x 10 rounds; each round: INCR the shared
# counter, store req:shared:<n>, read it back; also INCR a per-client counter.
my ($CLIENTS, $CONNS, $ROUNDS) = (12, 25, 10);
my $barrier = FMTest::barrier();
my @pids;
for my $c (1 .. $CLIENTS) {
    push @pids, FMTest::fork_child(150, sub {
        $barrier->wait;
        for (1 .. $CONNS) {
            my $s = connect_server() or die "connect: $!";
            for (1 .. $ROUNDS) {
                my $n = ask($s, 'INCR count:shared');
                die "INCR gave '$n'" unless $n =~ /^\d+\z/;
                my $v = "$n by $$";
                my $ok = ask($s, "SET req:shared:$n $v");
                die "SET gave '$ok'" unless $ok eq 'OK';
                my $got = ask($s, "GET req:shared:$n");
                die "GET req:shared:$n gave '$got', expected 'VALUE $v'"
                    unless $got eq "VALUE $v";
                my $m = ask($s, "INCR count:c$c");
                die "INCR gave '$m'" unless $m =~ /^\d+\z/;
            }
            print {$s} "QUIT\r\n";
            close $s;
        }
        return 0;
    });
}
$barrier->release;
my $st = FMTest::wait_children(170, @pids);
my @failed = grep { $st->{$_} } @pids;
is(scalar(@failed), 0, "all $CLIENTS clients finished without error")
    or diag(join ', ', map { "$_: " . FMTest::describe_status($st->{$_}) } @failed);

my $total = $CLIENTS * $CONNS * $ROUNDS;
is(talk('GET count:shared'), "VALUE $total", "shared counter is exactly $total");
is(talk('AUDIT shared'), "count=$total missing=0", 'every per-request key is there');
my @per = map { talk("GET count:c$_") } 1 .. $CLIENTS;
is(scalar(grep { $_ eq 'VALUE ' . ($CONNS * $ROUNDS) } @per), $CLIENTS,
    'every per-client counter is exact') or diag("@per");

like(talk('CHECK build'), qr/^impl=rust /, 'server still answers after the load');
ok(-f $share, 'share file still exists: recycled children did not remove it');

my $exit = XTServer::stop($pid, 30);
ok(defined $exit, "server (pid $pid) exited after SIGTERM");
ok(!XTServer::group_alive($pid), 'no server process left');
my @bad = grep { /\S/ } split /\n/, slurp("$dir/stderr.log");
is(scalar(@bad), 0, 'nothing on the server\'s stderr') or diag(join "\n", @bad);

sub connect_server {
    return IO::Socket::INET->new(
        PeerAddr => '127.0.0.1', PeerPort => $port, Proto => 'tcp', Timeout => 10);
}

sub ask {
    my ($s, $line) = @_;
    print {$s} "$line\r\n";
    my $reply = <$s>;
    die "connection closed after '$line'" unless defined $reply;
    $reply =~ s/\r?\n\z//;
    return $reply;
}

sub talk {
    my ($line) = @_;
    my $s = connect_server() or return "connect: $!";
    my $reply = eval { ask($s, $line) } // "error: $@";
    print {$s} "QUIT\r\n";
    close $s;
    return $reply;
}

sub slurp {
    my ($file) = @_;
    open my $lf, '<', $file or return '';
    local $/;
    return <$lf> // '';
}
