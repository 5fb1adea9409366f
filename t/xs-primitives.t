#!perl
# The upstream-shaped XS primitives (CONTRACT section 2, SPEC 2.13) that
# the Perl layer builds on: handle checks, fc_hash, lock ownership,
# fc_read/fc_write/fc_delete/fc_tombstone flag handling, fc_expunge and
# fc_get_keys output, fc_set_param/fc_init errors.
use strict;
use warnings;
use lib 't/lib';
use FMTest;
use Test::More;

my $T0 = FMTest::T0;
Cache::FastMmap::_set_time_override($T0);

my $c = FMTest::new_cache(num_pages => 7, page_size => 8192, serializer => '');
my $h = $c->{Cache};

# ------------------------------------------------ fc_hash
my ($p1, $s1) = Cache::FastMmap::fc_hash($h, 'key');
my ($p2, $s2) = Cache::FastMmap::fc_hash($h, 'key');
ok(defined $p1 && $p1 >= 0 && $p1 < 7, 'fc_hash: page within num_pages');
is_deeply([$p2, $s2], [$p1, $s1], 'fc_hash is deterministic');
is_deeply([Cache::FastMmap::fc_hash($h, "k\x{263A}")], [Cache::FastMmap::fc_hash($h, "k\xe2\x98\xba")],
          'fc_hash hashes the UTF-8 bytes (flag ignored)');
my %pages;
$pages{ (Cache::FastMmap::fc_hash($h, "k$_"))[0] }++ for 1 .. 700;
is(scalar(keys %pages), 7, '700 keys spread over all 7 pages');

# ------------------------------------------------ read/write/delete on a locked page
sub with_lock {
    my ($key, $code) = @_;
    my ($page, $slot) = Cache::FastMmap::fc_hash($h, $key);
    Cache::FastMmap::fc_lock($h, $page);
    my @r = eval { $code->($slot) };
    my $err = $@;
    Cache::FastMmap::fc_unlock($h);
    die $err if $err;
    return @r;
}

ok(!eval { Cache::FastMmap::fc_read($h, $s1, 'key'); 1 }, 'fc_read without the page lock croaks');
ok(!Cache::FastMmap::fc_is_locked($h), 'not locked');

with_lock('key', sub {
    my $slot = shift;
    ok(Cache::FastMmap::fc_is_locked($h), 'fc_lock: locked');
    my @miss = Cache::FastMmap::fc_read($h, $slot, 'key');
    is(scalar(@miss), 5, 'fc_read returns 5 values');
    ok(!defined $miss[0] && !$miss[2] && !$miss[3] && !defined $miss[4], 'miss: (undef, _, 0, 0, undef)');
    is(Cache::FastMmap::fc_write($h, $slot, 'key', 'val', 0xFFFFFFFF, 0), 1, 'fc_write returns 1');
    is_deeply([Cache::FastMmap::fc_read($h, $slot, 'key')], ['val', 0, 1, 0, undef],
              'fc_read: (value, flags, found, expire_on, modseq); default expiry = never');
    is(Cache::FastMmap::fc_write($h, $slot, 'key', 'v2', $T0 + 50, 1), 1, 'fc_write with expire_on and FC_ISDIRTY');
    is_deeply([Cache::FastMmap::fc_read($h, $slot, 'key')], ['v2', 1, 1, $T0 + 50, undef],
              'flags and expire_on read back');
    is(Cache::FastMmap::fc_write($h, $slot, 'key', undef, 0, 0), 1, 'fc_write of undef');
    my @u = Cache::FastMmap::fc_read($h, $slot, 'key');
    ok(!defined $u[0] && $u[1] == 0 && $u[2] == 1, 'undef value: value undef, FC_UNDEF stripped, found');
    is(Cache::FastMmap::fc_write($h, $slot, 'key', "\x{263A}", 0, 0), 1, 'fc_write of a UTF-8 value');
    my @w = Cache::FastMmap::fc_read($h, $slot, 'key');
    ok($w[0] eq "\x{263A}" && utf8::is_utf8($w[0]) && $w[1] == 0, 'UTF-8 value flagged, FC_UTF8VAL stripped');
    is(Cache::FastMmap::fc_write($h, $slot, 'key', 'm', 0, 0, 42), 1, 'fc_write with a modseq');
    is_deeply([Cache::FastMmap::fc_read($h, $slot, 'key')], ['m', 0, 1, 0, 42], 'modseq read back');
    is(Cache::FastMmap::fc_write($h, $slot, 'key', 'lower', 0, 0, 41), -1, 'lower modseq refused: -1');
    is(Cache::FastMmap::fc_write($h, $slot, 'key', 'equal', 0, 0, 42), 1, 'equal modseq stored');
    is(Cache::FastMmap::fc_write($h, $slot, 'key', 'plain', 0, 0), 1, 'plain over a modseq value stored');
    is_deeply([Cache::FastMmap::fc_read($h, $slot, 'key')], ['plain', 0, 1, 0, undef], '... modseq cleared');
    is_deeply([Cache::FastMmap::fc_delete($h, $slot, 'key')], [1, 0], 'fc_delete: (1, flags)');
    is_deeply([Cache::FastMmap::fc_delete($h, $slot, 'key')], [0, 0], 'fc_delete of nothing: (0, 0)');
    ok(!eval { Cache::FastMmap::fc_tombstone($h, $slot, 'key', 0, undef); 1 }, 'fc_tombstone without modseq croaks');
    like($@, qr/fc_tombstone requires a modseq/, '... with the message');
    is(Cache::FastMmap::fc_tombstone($h, $slot, 'key', 0, 7), 1, 'fc_tombstone returns 1');
    my @t = Cache::FastMmap::fc_read($h, $slot, 'key');
    ok(!$t[2], 'a tombstone reads as a miss');
    is(Cache::FastMmap::fc_write($h, $slot, 'key', 'plain', 0, 0), -1, 'plain write over a tombstone: -1');
    is_deeply([Cache::FastMmap::fc_delete($h, $slot, 'key')], [1, 0], 'fc_delete removes the tombstone');
});
ok(!Cache::FastMmap::fc_is_locked($h), 'fc_unlock: unlocked');

# ------------------------------------------------ fc_get_keys / fc_expunge
{
    my $c2 = FMTest::new_cache(num_pages => 1, page_size => 8192, serializer => '');
    my $h2 = $c2->{Cache};
    my ($page, $slot) = Cache::FastMmap::fc_hash($h2, 'a');
    Cache::FastMmap::fc_lock($h2, $page);
    for my $k ('a', 'b', "w\x{263A}") {
        my (undef, $s) = Cache::FastMmap::fc_hash($h2, $k);
        Cache::FastMmap::fc_write($h2, $s, $k, "val-$k", 0, $k eq 'a' ? 1 : 0);
    }
    Cache::FastMmap::fc_unlock($h2);
    is_deeply([sort(Cache::FastMmap::fc_get_keys($h2, 0))], [sort('a', 'b', "w\x{263A}")], 'fc_get_keys mode 0');
    my %m2 = map { $_->{key} => $_ } Cache::FastMmap::fc_get_keys($h2, 2);
    is_deeply([sort keys %{ $m2{a} }], [qw(expire_on flags key last_access value)], 'fc_get_keys mode 2 fields');
    is($m2{a}{flags}, 1, 'dirty flag visible');
    is($m2{a}{last_access}, $T0, 'last_access from the overridden clock');
    is($m2{"w\x{263A}"}{value}, "val-w\x{263A}", 'UTF-8 key and value');
    is(scalar(my @x = Cache::FastMmap::fc_get_keys($h2, 5)), 0, 'fc_get_keys other mode: empty');

    Cache::FastMmap::fc_lock($h2, $page);
    my @ev = Cache::FastMmap::fc_expunge($h2, 1, 1, -1);
    Cache::FastMmap::fc_unlock($h2);
    my %ev = map { $_->{key} => $_ } @ev;
    is_deeply([sort keys %ev], [sort('a', 'b', "w\x{263A}")], 'fc_expunge mode 1 with wb returns every item');
    is_deeply([sort keys %{ $ev{a} }], [qw(expire_on flags key last_access value)], 'fc_expunge item fields');
    is($ev{a}{flags}, 1, '... flags');
    is($ev{b}{value}, 'val-b', '... value');
    is(scalar(my @k = Cache::FastMmap::fc_get_keys($h2, 0)), 0, 'page empty after fc_expunge mode 1');
    Cache::FastMmap::fc_lock($h2, $page);
    is(scalar(my @n = Cache::FastMmap::fc_expunge($h2, 1, 0, -1)), 0, 'fc_expunge without wb: empty list');
    Cache::FastMmap::fc_unlock($h2);
}

# ------------------------------------------------ page details
{
    my $c3 = FMTest::new_cache(num_pages => 1, page_size => 8192, enable_stats => 1);
    $c3->set('a', 1);
    $c3->get('a');
    $c3->get('b');
    my $h3 = $c3->{Cache};
    Cache::FastMmap::fc_lock($h3, 0);
    is_deeply([Cache::FastMmap::fc_get_page_details($h3)], [2, 1], 'fc_get_page_details: (nreads, nreadhits)');
    Cache::FastMmap::fc_reset_page_details($h3);
    is_deeply([Cache::FastMmap::fc_get_page_details($h3)], [0, 0], 'fc_reset_page_details zeroes them');
    Cache::FastMmap::fc_unlock($h3);
}

# ------------------------------------------------ handle checks
{
    ok(!eval { Cache::FastMmap::fc_is_locked(undef); 1 }, 'undef handle croaks');
    like($@, qr/Object not reference/, "... 'Object not reference'");
    my $s = 'text';
    ok(!eval { Cache::FastMmap::fc_is_locked(\$s); 1 }, 'ref to a string croaks');
    like($@, qr/Object not initialised correctly/, "... 'Object not initialised correctly'");
    my $nh = Cache::FastMmap::fc_new();
    ok(ref($nh), 'fc_new returns a reference');
    Cache::FastMmap::fc_close($nh);
    ok(!eval { Cache::FastMmap::fc_is_locked($nh); 1 }, 'closed handle croaks');
    like($@, qr/the cache is closed/, "... 'the cache is closed'");
    ok(!eval { Cache::FastMmap::fc_close($nh); 1 }, 'closing twice croaks instead of freeing twice');

    # The pointer lives in magic, not in the scalar: a forged or copied
    # handle is refused instead of being used as a pointer.
    my $live = Cache::FastMmap::fc_new();
    my $forged = bless \(my $iv = 0 + $$live), 'Cache::FastMmap::Handle';
    ok(!eval { Cache::FastMmap::fc_is_locked($forged); 1 }, 'a forged handle croaks');
    like($@, qr/Object not initialised correctly/, '... as not initialised');
    my $copy = ${$live};
    ok(!eval { Cache::FastMmap::fc_is_locked(\$copy); 1 }, 'a copy of the handle scalar croaks');
    ok(eval { Cache::FastMmap::fc_is_locked($live); 1 }, 'the real handle still works');
    undef $live;
    pass('freeing the last reference frees the handle (no double free with the copies)');
}

# ------------------------------------------------ fc_set_param / fc_init
{
    my $nh = Cache::FastMmap::fc_new();
    ok(!eval { Cache::FastMmap::fc_set_param($nh, 'no_such_param', 1); 1 }, 'unknown parameter croaks');
    like($@, qr/Bad set_param parameter: no_such_param/, '... naming it');
    ok(!eval { Cache::FastMmap::fc_set_param($nh, 'num_pages', 'many'); 1 }, 'bad number croaks');
    like($@, qr/num_pages/, '... naming the option');

    my $f = FMTest::share_file();
    Cache::FastMmap::fc_set_param($nh, 'share_file', $f);
    Cache::FastMmap::fc_set_param($nh, 'num_pages', 3);
    Cache::FastMmap::fc_set_param($nh, 'page_size', 256);
    Cache::FastMmap::fc_set_param($nh, 'start_slots', 89);
    ok(!eval { Cache::FastMmap::fc_init($nh); 1 }, 'fc_init of 256-byte pages with 89 slots croaks');
    like($@, qr/page_size/, '... naming page_size');
    Cache::FastMmap::fc_close($nh);

    my $ok = Cache::FastMmap::fc_new();
    my $f2 = FMTest::share_file();
    Cache::FastMmap::fc_set_param($ok, 'share_file', $f2);
    Cache::FastMmap::fc_set_param($ok, 'num_pages', 3);
    Cache::FastMmap::fc_set_param($ok, 'page_size', 4096);
    ok(eval { Cache::FastMmap::fc_init($ok); 1 }, 'fc_init of a sane geometry works') or diag($@);
    ok(-e $f2, 'share file created');
    Cache::FastMmap::fc_close($ok);
    unlink $f2;
    my $bad = Cache::FastMmap::fc_new();
    Cache::FastMmap::fc_set_param($bad, 'share_file', FMTest::tmpdir() . '/no/such/dir/file');
    ok(!eval { Cache::FastMmap::fc_init($bad); 1 }, 'fc_init in a missing directory croaks');
    like($@, qr{/no/such/dir/file}, '... naming the file');
    Cache::FastMmap::fc_close($bad);
}

Cache::FastMmap::_set_time_override();
done_testing;
