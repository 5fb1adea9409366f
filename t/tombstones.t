# Conditional stores with modseq and tombstones (upstream 1.63; SPEC 1.5,
# 2.7 and risk 10).
use strict;
use warnings;
use lib 't/lib';
use FMTest;
use Test::More;

my $T0 = FMTest::T0;
Cache::FastMmap::_set_time_override($T0);

my $MAX = '18446744073709551615';

sub cache { FMTest::new_cache(serializer => '', @_) }
sub locked { Cache::FastMmap::fc_is_locked($_[0]{Cache}) ? 1 : 0 }
sub modseq_of {
    my ($c, $key) = @_;
    my $v = $c->get($key, { modseq => \my $ms });
    return ($v, $ms);
}
# The modseq a tombstone holds is not readable; probe it by which value
# stores are refused.  Returns the smallest m in @cands accepted by
# set(..., {modseq => m}) on a fresh copy of the situation built by $setup.
sub smallest_accepted {
    my ($setup, @cands) = @_;
    for my $m (@cands) {
        my $c = cache();
        $setup->($c);
        return $m if $c->set('k', "v$m", { modseq => $m });
    }
    return undef;
}

# --------------------------------------------------------- the matrix
# tombstone(M) then tombstone(m)
{
    my $c = cache();
    is($c->remove('k', { modseq => 10 }), 1, 'tombstone(10) on an absent key: returns 1');
    is($c->remove('k', { modseq => 5 }),  1, 'tombstone(5) over tombstone(10): returns 1');
    is(smallest_accepted(sub { $_[0]->remove('k', { modseq => 10 }); $_[0]->remove('k', { modseq => 5 }) }, 5 .. 12),
        10, '... a no-op: the tombstone keeps modseq 10 (never lowered)');
    is(smallest_accepted(sub { $_[0]->remove('k', { modseq => 10 }); $_[0]->remove('k', { modseq => 10 }) }, 5 .. 12),
        10, 'tombstone(10) over tombstone(10): still 10');
    is(smallest_accepted(sub { $_[0]->remove('k', { modseq => 10 }); $_[0]->remove('k', { modseq => 20 }) }, 5, 10, 15, 19, 20, 21),
        20, 'tombstone(20) over tombstone(10): overwrites (now 20)');
}

# tombstone(M) then values
{
    my $c = cache();
    $c->remove('k', { modseq => 10 });
    is($c->set('k', 'plain'), 0, 'plain set over a live tombstone: refused (returns 0)');
    is($c->get('k'), undef, '... nothing stored');
    is($c->set('k', 'low', { modseq => 9 }), 0, 'value with a lower modseq: refused');
    is($c->get('k'), undef, '... nothing stored');
    is($c->exists('k'), 0, 'exists() of a tombstone is 0');
    is($c->set('k', 'eq', { modseq => 10 }), 1, 'value with an equal modseq: stored');
    is_deeply([ modseq_of($c, 'k') ], [ 'eq', 10 ], '... value and modseq 10');

    my $d = cache();
    $d->remove('k', { modseq => 10 });
    is($d->set('k', 'hi', { modseq => 11 }), 1, 'value with a higher modseq over a tombstone: stored');
    is_deeply([ modseq_of($d, 'k') ], [ 'hi', 11 ], '... value and modseq 11');
}

# live value(M) then tombstones
{
    my $c = cache();
    is($c->set('k', 'live', { modseq => 10 }), 1, 'value with modseq 10');
    is($c->remove('k', { modseq => 9 }), 1, 'tombstone(9) over live(10): returns 1');
    is_deeply([ modseq_of($c, 'k') ], [ 'live', 10 ], '... a no-op, the live value is kept');
    is($c->remove('k', { modseq => 10 }), 1, 'tombstone(10) over live(10): returns 1');
    is_deeply([ modseq_of($c, 'k') ], [ 'live', 10 ], '... a no-op as well');
    is($c->remove('k', { modseq => 11 }), 1, 'tombstone(11) over live(10)');
    is_deeply([ modseq_of($c, 'k') ], [ undef, undef ], '... replaces the value (a miss, no modseq)');
    is($c->set('k', 'again', { modseq => 10 }), 0, '... the tombstone now holds 11');
    is($c->set('k', 'again', { modseq => 11 }), 1, '... (11 accepted)');
}

# live value(M) then values
{
    my $c = cache();
    $c->set('k', 'live', { modseq => 10 });
    is($c->set('k', 'low', { modseq => 9 }), 0, 'value(9) over live(10): refused');
    is_deeply([ modseq_of($c, 'k') ], [ 'live', 10 ], '... old value kept');
    is($c->set('k', 'same', { modseq => 10 }), 1, 'value(10) over live(10): stored');
    is_deeply([ modseq_of($c, 'k') ], [ 'same', 10 ], '... new value');
    is($c->set('k', 'up', { modseq => 12 }), 1, 'value(12) over live(10): stored');
    is($c->set('k', 'plain'), 1, 'plain set over a live modseq value: stored');
    is_deeply([ modseq_of($c, 'k') ], [ 'plain', undef ], '... and the modseq is cleared');
    is($c->set('k', 'low-again', { modseq => 1 }), 1, '... so any modseq is accepted afterwards');
}

# a plain old entry never refuses
{
    my $c = cache();
    $c->set('k', 'plain');
    is($c->set('k', 'ms', { modseq => 0 }), 1, 'value(0) over a plain entry: stored');
    my $d = cache();
    $d->set('k', 'plain');
    is($d->remove('k', { modseq => 1 }), 1, 'tombstone over a plain entry');
    is($d->get('k'), undef, '... replaces it');
    is($d->set('k', 'x'), 0, '... and then refuses plain sets');
}

# get_and_set through the same rules
{
    my $c = cache();
    $c->remove('k', { modseq => 7 });
    my @r = $c->get_and_set('k', sub { ('new', { modseq => 6 }) });
    is_deeply(\@r, [ 'new', 0 ], 'get_and_set refused by a tombstone: (value, 0)');
    is($c->get('k'), undef, '... nothing stored');
    is(locked($c), 0, '... page unlocked');
    @r = $c->get_and_set('k', sub { is_deeply($_[2], {}, 'callback options over a tombstone: {} (a miss)'); ('new', { modseq => 8 }) });
    is_deeply(\@r, [ 'new', 1 ], 'get_and_set with a newer modseq: stored');
    $c->get_and_set('k', sub { is_deeply($_[2], { expire_on => 0, modseq => 8 }, 'callback sees expire_on and modseq'); () });
}

# ------------------------------------------------------- get modseq option
{
    my $c = cache();
    $c->set('p', 'plain');
    $c->set('m', 'val', { modseq => 42 });
    my $ms = 'untouched';
    is($c->get('p', { modseq => \$ms }), 'plain', 'get with modseq option returns the value');
    is($ms, undef, '... modseq undef for an entry without one');
    $ms = 'untouched';
    $c->get('m', { modseq => \$ms });
    is($ms, 42, '... the stored modseq');
    $ms = 'untouched';
    is($c->get('absent', { modseq => \$ms }), undef, 'miss');
    is($ms, undef, '... modseq undef on a miss');
    $c->remove('t', { modseq => 9 });
    $ms = 'untouched';
    $c->get('t', { modseq => \$ms });
    is($ms, undef, '... and on a tombstone');
}

# --------------------------------------------------------------- validation
{
    my $c = cache();
    $c->set('k', 'orig');
    for my $bad ('abc', '-1', '1.5', '', ' 5', '5a', [1]) {
        my $name = ref $bad ? 'an array ref' : "'$bad'";
        my $ok = eval { $c->set('k', 'new', { modseq => $bad }); 1 };
        ok(!$ok, "set modseq $name dies");
        like($@, qr/^set modseq option must be an unsigned integer at /, '... with the upstream message');
        is(locked($c), 0, '... no lock left');
        $ok = eval { $c->remove('k', { modseq => $bad }); 1 };
        ok(!$ok, "remove modseq $name dies");
        like($@, qr/^remove modseq option must be an unsigned integer at /, '... with the upstream message');
    }
    is($c->get('k'), 'orig', 'nothing was changed by the failed calls');

    for my $bad ([], {}, sub { 1 }) {
        my $ok = eval { $c->get('k', { modseq => $bad }); 1 };
        ok(!$ok, 'get modseq option ' . ref($bad) . ' ref dies');
        like($@, qr/^get modseq option must be a scalar ref at /, '... with the upstream message');
        is(locked($c), 0, '... page unlocked');
    }
    is($c->set('k', 'undef-ok', { modseq => undef }), 1, 'modseq => undef means no modseq');
    is_deeply([ modseq_of($c, 'k') ], [ 'undef-ok', undef ], '... stored plain');
}

# ------------------------------------------------------------ u64 saturation
{
    my $c = cache();
    is($c->set('k', 'max', { modseq => $MAX }), 1, 'modseq 2**64-1 accepted');
    is((modseq_of($c, 'k'))[1], $MAX, '... read back exactly');
    for my $over ('18446744073709551616', '99999999999999999999999', '1' . ('0' x 40)) {
        my $d = cache();
        is($d->set('k', 'big', { modseq => $over }), 1, "modseq $over accepted");
        my $ms = (modseq_of($d, 'k'))[1];
        is("$ms", $MAX, '... saturates to 18446744073709551615');
        is($d->set('k', 'eq', { modseq => $MAX }), 1, '... an equal modseq is then accepted');
        is($d->set('k', 'lower', { modseq => '18446744073709551614' }), 0, '... a lower one refused');
    }
    my $t = cache();
    is($t->remove('k', { modseq => '99999999999999999999999' }), 1, 'a huge tombstone modseq');
    is($t->set('k', 'v', { modseq => '18446744073709551614' }), 0, '... saturated: 2**64-2 refused');
    is($t->set('k', 'v', { modseq => $MAX }), 1, '... 2**64-1 accepted (equal)');
    is($c->set('z', 'zero', { modseq => '000' }), 1, 'leading zeros are fine');
    is((modseq_of($c, 'z'))[1], 0, '... modseq 0');
}

# ------------------------------------------------------- expiring tombstones
{
    my $c = cache(tombstone_expire_time => 30);
    is($c->remove('k', { modseq => 10 }), 1, 'tombstone with tombstone_expire_time 30');
    Cache::FastMmap::_set_time_override($T0 + 29);
    is($c->set('k', 'plain'), 0, '... still refuses at +29');
    Cache::FastMmap::_set_time_override($T0 + 30);
    is($c->set('k', 'plain'), 1, '... expired at +30 (inclusive): imposes nothing');
    is($c->get('k'), 'plain', '... value stored');
    Cache::FastMmap::_set_time_override($T0);

    my $d = cache(expire_time => 20);
    $d->remove('k', { modseq => 10 });
    Cache::FastMmap::_set_time_override($T0 + 19);
    is($d->set('k', 'v', { modseq => 3 }), 0, 'tombstone_expire_time 0: the cache expire_time (20) applies');
    Cache::FastMmap::_set_time_override($T0 + 20);
    is($d->set('k', 'v', { modseq => 3 }), 1, '... expired after 20 s, lower modseq accepted');
    Cache::FastMmap::_set_time_override($T0);

    my $e = cache(tombstone_expire_time => 1000);
    $e->remove('a', { modseq => 5, expire_time => 10 });
    $e->remove('b', { modseq => 5, expire_on => $T0 + 15 });
    $e->remove('n', { modseq => 5 });
    my $f = cache();
    $f->remove('never', { modseq => 5 });
    Cache::FastMmap::_set_time_override($T0 + 16);
    is($e->set('a', 'x'), 1, 'remove expire_time option sets the tombstone expiry');
    is($e->set('b', 'x'), 1, 'remove expire_on option sets the tombstone expiry');
    is($e->set('n', 'x'), 0, 'tombstone_expire_time 1000 still holds');
    Cache::FastMmap::_set_time_override($T0 + 10_000_000);
    is($f->set('never', 'x'), 0, 'no expiry anywhere: the tombstone never expires');
    is($e->set('n', 'x'), 1, '... the 1000 s one has');
    Cache::FastMmap::_set_time_override($T0);

    my $g = cache();
    $g->set('k', 'live', { modseq => 50, expire_on => $T0 + 5 });
    Cache::FastMmap::_set_time_override($T0 + 5);
    is($g->set('k', 'older', { modseq => 1 }), 1, 'an expired live modseq value imposes nothing');
    Cache::FastMmap::_set_time_override($T0);
}

# ------------------------------------------------------ get_keys and tombstones
{
    my $c = cache();
    $c->set('plain', 'p');
    $c->set('ms', 'm', { modseq => 77 });
    $c->remove('tomb', { modseq => 3 });
    $c->remove('gone', { modseq => 4 });
    is_deeply([ sort $c->get_keys(0) ], [qw(ms plain)], 'get_keys(0) hides tombstones');
    my %rec = map { $_->{key} => $_ } $c->get_keys(1);
    is_deeply([ sort keys %rec ], [qw(ms plain)], 'get_keys(1) hides tombstones');
    is($rec{ms}{modseq}, 77, 'get_keys(1) exposes the modseq');
    ok(!exists $rec{plain}{modseq}, '... and has no modseq key for an entry without one');
    is_deeply([ sort keys %{ $rec{ms} } ], [qw(expire_on flags key last_access modseq)], '... hash keys in mode 1');
    is($rec{ms}{flags}, 0, '... flags do not leak the modseq bit');
    %rec = map { $_->{key} => $_ } $c->get_keys(2);
    is($rec{ms}{modseq}, 77, 'get_keys(2) exposes the modseq');
    is($rec{ms}{value}, 'm', '... with the value');
    my $s = cache(serializer => 'storable');
    $s->set('ms', [1], { modseq => 5 });
    $s->remove('t', { modseq => 5 });
    my @r = $s->get_keys(2);
    is(scalar @r, 1, 'deserializing get_keys(2) hides tombstones too');
    is_deeply([ @{ $r[0] }{qw(key value modseq)} ], [ 'ms', [1], 5 ], '... and keeps the modseq');
}

# --------------------------------------------------------- removing tombstones
{
    my $c = cache();
    is($c->remove('absent', { modseq => 1 }), 1, 'remove with modseq returns 1 for an absent key');
    $c->set('k', 'v', { modseq => 100 });
    is($c->remove('k', { modseq => 1 }), 1, '... and 1 for a no-op');

    $c->remove('t', { modseq => 9 });
    is($c->remove('t'), 1, 'plain remove deletes a tombstone (returns 1)');
    is($c->set('t', 'plain'), 1, '... then a plain set is accepted');
    is($c->remove('t2'), 0, 'plain remove of an absent key returns 0');

    $c->remove('u', { modseq => 9 });
    my @r = $c->get_and_remove('u');
    is_deeply(\@r, [ undef, 1 ], 'get_and_remove on a tombstone: (undef, 1)');
    is($c->set('u', 'plain'), 1, '... the tombstone is gone');
    @r = $c->get_and_remove('u');
    is_deeply(\@r, [ 'plain', 1 ], 'get_and_remove of the value');

    $c->remove('w', { modseq => 9 });
    $c->clear;
    is($c->set('w', 'plain'), 1, 'clear removes tombstones');
}

# -------------------------------------------------- read_cb over a tombstone
{
    my $n = 0;
    my $c = cache(read_cb => sub { $n++; "cb-$_[1]" }, cache_not_found => 1);
    $c->remove('k', { modseq => 5 });
    is($c->get('k'), 'cb-k', 'get over a tombstone calls read_cb and returns its value');
    is($c->get('k'), 'cb-k', '... again');
    is($n, 2, '... but the value is not cached (read_cb called each time)');
    is(locked($c), 0, '... page unlocked');
    is($c->exists('k'), 0, '... the tombstone still holds the key');
    is($c->set('k', 'plain'), 0, '... and still refuses plain sets');
    is($c->set('k', 'newer', { modseq => 6 }), 1, '... a newer modseq replaces it');
    is($c->get('k'), 'newer', '... and get now hits');
    is($n, 2, '... without read_cb');
}

done_testing;
