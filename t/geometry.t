#!perl
# Geometry arithmetic of new() (SPEC 1.2, 5.1, 6): the reported
# num_pages/page_size/cache_size, RoundPow2, and the deliberate deviation
# of rejecting geometries that cannot work instead of corrupting memory.
use strict;
use warnings;
use lib 't/lib';
use FMTest;
use Test::More;

# ------------------------------------------------------------ RoundPow2
for my $k (0 .. 30) {
    is(Cache::FastMmap::RoundPow2(2**$k), 2**$k, "RoundPow2(2**$k) is itself");
}
my @round = ([6000, 4096], [65535, 32768], [65537, 65536], [1000, 512],
             [3, 2], [4095, 2048], [300, 256], [2**20 + 1, 2**20]);
for (@round) {
    my ($in, $out) = @$_;
    is(Cache::FastMmap::RoundPow2($in), $out, "RoundPow2($in) rounds down to $out");
}

# ------------------------------------------------------------ the table
my @table = (
    [ {}                                       => 89,   65536,   5832704 ],
    [ { cache_size => '1k' }                   => 1,    65536,   65536 ],
    [ { cache_size => '1m' }                   => 21,   65536,   1376256 ],
    [ { cache_size => '1M' }                   => 21,   65536,   1376256 ],
    [ { cache_size => 1000000 }                => 21,   65536,   1376256 ],
    [ { cache_size => '10m' }                  => 179,  65536,   11730944 ],
    [ { cache_size => '100m' }                 => 2879, 65536,   188678144 ],
    [ { cache_size => 89 * 65536 }             => 179,  65536,   11730944 ],
    [ { cache_size => 89 * 65536 - 1 }         => 89,   65536,   5832704 ],
    [ { cache_size => '1m', num_pages => 7 }   => 7,    131072,  917504 ],
    [ { cache_size => '1m', page_size => '8k' } => 179, 8192,    1466368 ],
    [ { cache_size => '1m', page_size => 5000 } => 359, 5000,    1795000 ],
    [ { cache_size => '1m', page_size => 1024 } => 359, 4096,    1470464 ],
    [ { cache_size => '10k', num_pages => 89 } => 89,   4096,    364544 ],
    [ { page_size => '8k' }                    => 89,   8192,    729088 ],
    [ { page_size => '8K' }                    => 89,   8192,    729088 ],
    [ { page_size => 5000 }                    => 89,   4096,    364544 ],
    [ { page_size => 1024 }                    => 89,   1024,    91136 ],
    [ { page_size => 1000 }                    => 89,   512,     45568 ],
    [ { page_size => 65535 }                   => 89,   32768,   2916352 ],
    [ { page_size => '1m' }                    => 89,   1048576, 93323264 ],
    [ { page_size => 2**20 + 1 }               => 89,   1048576, 93323264 ],
    [ { num_pages => 3 }                       => 3,    65536,   196608 ],
    # CHI's FastMmap driver relies on these two (SPEC 6)
    [ { cache_size => '500k' }                 => 9,    65536,   589824 ],
    [ { num_pages => 11, page_size => 5000 }   => 11,   4096,    45056 ],
    # explicit zero means "use the default" (num_pages ||= 89 etc.)
    [ { num_pages => 0 }                       => 89,   65536,   5832704 ],
    [ { page_size => 0 }                       => 89,   65536,   5832704 ],
    [ { num_pages => 0, page_size => 0, cache_size => 0 } => 89, 65536, 5832704 ],
    # page_size is ignored when cache_size and num_pages are both given
    [ { cache_size => '1m', num_pages => 7, page_size => 1024 } => 7, 131072, 917504 ],
);

for my $row (@table) {
    my ($args, $np, $ps, $cs) = @$row;
    my $desc = join(', ', map { "$_=>$args->{$_}" } sort keys %$args) || 'defaults';
    my $file = FMTest::share_file();
    my $c = eval { Cache::FastMmap->new(%$args, share_file => $file) };
    ok($c, "new($desc) succeeds") or do { diag($@); next };
    is($c->{num_pages}, $np, "$desc: num_pages");
    is($c->{page_size}, $ps, "$desc: page_size");
    is($c->{cache_size}, $cs, "$desc: cache_size");
    ok(-s $file >= $cs, "$desc: share file holds at least cache_size bytes");
    # the cache must really work with that geometry, on several pages
    my $ok = 1;
    for my $i (1 .. 20) {
        $ok &&= $c->set("key$i", "value$i") == 1;
    }
    for my $i (1 .. 20) {
        $ok &&= (($c->get("key$i") // '') eq "value$i");
    }
    ok($ok, "$desc: 20 sets/gets work");
    undef $c;
    ok(!-e $file, "$desc: share file unlinked on destruction");
}

# hashref form of the constructor gives the same geometry
{
    my $c = Cache::FastMmap->new({ share_file => FMTest::share_file(), cache_size => '1m', page_size => 5000 });
    is_deeply([ @$c{qw(num_pages page_size cache_size)} ], [ 359, 5000, 1795000 ], 'new(\%opts) geometry');
}

# start_slots below 89 works (fixed in 1.61)
eval {
    my $c = FMTest::new_cache(num_pages => 3, page_size => 8192, start_slots => 50);
    my $ok = 1;
    $ok &&= $c->set("s$_", "v$_") for 1 .. 200;
    ok($ok, 'start_slots => 50: sets succeed');
    my $found = grep { ($c->get("s$_") // '') eq "v$_" } 190 .. 200;
    is($found, 11, 'start_slots => 50: recent values readable');
    1;
} or fail("start_slots => 50: $@");

# ------------------------------------------------------------ rejections
# Deliberate deviation: tiny pages corrupt memory in the reference; we croak.
# Each attempt runs in a bounded child (the reference's arithmetic loops
# forever on some of these inputs, or tries to create a huge file); the child
# reports the error text through a pipe.
sub rejects {
    my ($args, $re, $desc) = @_;
    my $file = FMTest::share_file();
    pipe(my $r, my $w) or die "pipe: $!";
    my $pid = FMTest::fork_child(30, sub {
        close $r;
        local $SIG{__WARN__} = sub { };
        my $c = eval { Cache::FastMmap->new(%$args, share_file => $file) };
        print $w ($c ? "CREATED\n" : "ERROR $@");
        close $w;
        return 0;
    });
    close $w;
    my $st = FMTest::wait_children(40, $pid);
    my $out = do { local $/; <$r> } // '';
    close $r;
    unlink $file;
    is(FMTest::describe_status($st->{$pid}), 'exit 0', "$desc: new returns or croaks (no crash, no hang)");
    like($out, qr/^ERROR /, "$desc: new croaks");
    like($out, $re, "$desc: error names the problem") if $out =~ /^ERROR /;
}

rejects({ page_size => 300 }, qr/page_size/, 'page_size=>300 (256-byte pages, 89 slots)');
rejects({ page_size => 256 }, qr/page_size/, 'page_size=>256');
rejects({ page_size => 100 }, qr/page_size/, 'page_size=>100');
rejects({ page_size => 1 },   qr/page_size/, 'page_size=>1');
rejects({ page_size => 1024, start_slots => 300 }, qr/page_size|start_slots/,
        'page_size=>1024 with start_slots=>300');

# ...and the process really survives trying it and using the result
for my $ps (300, 256) {
    my $file = FMTest::share_file();
    my $st = FMTest::run_in_child(30, sub {
        my $c = eval { Cache::FastMmap->new(share_file => $file, page_size => $ps) };
        return 0 unless $c;      # rejected: fine
        $c->set("k$_", 'x' x 20) for 1 .. 500;
        return 1;                # accepted and survived: still wrong
    });
    is(FMTest::describe_status($st), 'exit 0', "page_size=>$ps: rejected in a child, no crash");
}

# Deliberate deviation: non-numeric, zero (but true) and negative geometry
# options croak with a message naming the option.
my @bad = (
    [ num_pages  => 'abc' ], [ num_pages  => -5 ], [ num_pages  => '0.0' ],
    [ num_pages  => -1 ],
    [ page_size  => 'abc' ], [ page_size  => -4096 ], [ page_size  => '0k' ],
    [ page_size  => '0.0' ],
    [ cache_size => 'abc' ], [ cache_size => '-1m' ],
);
for my $b (@bad) {
    my ($opt, $val) = @$b;
    rejects({ $opt => $val }, qr/\Q$opt\E/, "$opt => '$val'");
}

done_testing;
