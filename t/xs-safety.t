#!perl
# Memory safety of the XS glue where it meets Perl code: every case here
# crashed, corrupted the stack or read freed memory in an earlier build.
#
#  - Perl code that grows the argument stack (a callback, serializer or
#    deserializer building a big list) while a fast path waits for it: the
#    results must still come back right.
#  - get_and_set's options hash: assigning to $_[2] must not reach the
#    handle's own state.
#  - The cache closed from Perl code that runs inside a call (a __WARN__
#    handler, a key's stringification): a clean croak, never freed memory.
#  - Keys and page keys changed by Perl code while a call is under way.
#  - Tied (magical) expiry arguments are honoured.
# Each risky case runs in a child first, so a crash shows as a failed test
# with its signal instead of killing the whole file.
use strict;
use warnings;
use lib 't/lib';
use FMTest;
use Test::More;
use Storable ();

my $T0 = 1_700_000_000;
Cache::FastMmap::_set_time_override($T0);

# Runs $code in a bounded child: 'ok' when it returned true, else what
# happened (a signal means a crash).
sub in_child {
    my ($code) = @_;
    my $st = FMTest::run_in_child(60, sub { $code->() ? 0 : 1 });
    return $st == 0 ? 'ok' : FMTest::describe_status($st);
}

# ------------------------------------------------ stack growth in callbacks
# The stack never shrinks, so each case runs in a fresh interpreter (a
# forked child would inherit a stack that an earlier case already grew).
# The snippet exits 0 when every result came back right.
sub fresh_perl {
    my ($setup, $check) = @_;
    local $ENV{PERL5LIB} = join(':', grep { !ref } @INC);
    my $prog = <<"PERL";
use strict; use warnings; use FMTest; use Storable ();
my \@KEEP;
sub grow_stack { my \@l = (1) x 100_000; push \@KEEP, [1 .. 10]; return scalar \@l }
my \@BIG_SER = (sub { grow_stack(); Storable::nfreeze(\$_[0]) },
                sub { grow_stack(); Storable::thaw(\$_[0]) });
my \@BIG_COMP = (sub { grow_stack(); "z" . \$_[0] }, sub { grow_stack(); substr(\$_[0], 1) });
my \$c = FMTest::new_cache(num_pages => 3, page_size => 16384, $setup);
exit((do { $check }) ? 0 : 1);
PERL
    my $st = FMTest::run_in_child(60, sub { { exec $^X, '-e', $prog } 127 });
    return $st == 0 ? 'ok' : FMTest::describe_status($st);
}

for my $cfg (['raw', "serializer => ''"],
             ['custom serializer', 'serializer => \@BIG_SER'],
             ['custom compressor', "serializer => '', compressor => \\\@BIG_COMP"],
             ['both', 'serializer => \@BIG_SER, compressor => \@BIG_COMP']) {
    my ($name, $setup) = @$cfg;
    my %check = (
        'get_and_set, scalar context' =>
            q{ $c->get_and_set('gs', sub { 'v' . grow_stack() }) eq 'v100000' && $c->get('gs') eq 'v100000' },
        'get_and_set, list context' =>
            q{ my @l = $c->get_and_set('gs', sub { grow_stack() }); "@l" eq '100000 1' },
        'get_and_set over an existing value' =>
            q{ $c->set('gs', 'a'); my @l = $c->get_and_set('gs', sub { $_[1] . grow_stack() }); "@l" eq 'a100000 1' },
        'set' =>
            q{ my @r = $c->set('s', 'value'); "@r" eq '1' && $c->get('s') eq 'value' },
        'get' =>
            q{ $c->set('s', 'value'); my $v = $c->get('s'); !ref($v) && $v eq 'value' },
        'multi_set and multi_get' =>
            q{ my @r = $c->multi_set('pk', { a => 'x', b => 'y' });
               my $m = $c->multi_get('pk', [qw(a b c)]);
               "@r" eq '1' && ref($m) eq 'HASH' && join(',', map { "$_=$m->{$_}" } sort keys %$m) eq 'a=x,b=y' },
    );
    for my $what (sort keys %check) {
        # The raw cache only has the get_and_set callback to grow the stack.
        next if $name eq 'raw' && $what !~ /get_and_set/;
        is(fresh_perl($setup, $check{$what}), 'ok', "$name: $what, with Perl code growing the stack");
    }
}

# ------------------------------------------------ get_and_set's $_[2]
{
    my $c = FMTest::new_cache(serializer => '');
    is(in_child(sub {
        $c->get_and_set('k', sub { $_[2] = 42; 1 }) for 1 .. 3;
        $c->get_and_set('k', sub { undef $_[2]; 2 });
        $c->get_and_set('k', sub { $_[2] = [] ; 3 });
        my $seen;
        $c->get_and_set('k', sub { $seen = ref $_[2]; $_[1] + 1 }) == 4 && $seen eq 'HASH';
    }), 'ok', 'assigning to $_[2] changes nothing of the cache');
    my %kept;
    $c->set('k', 'a');
    $c->get_and_set('k', sub { %kept = %{ $_[2] }; $_[2]{junk} = 1; 'b' });
    ok(exists $kept{expire_on}, 'the options hash carries expire_on');
    my $later;
    $c->get_and_set('k', sub { $later = { %{ $_[2] } }; 'c' });
    ok(!exists $later->{junk}, "a key the last callback added is not seen by the next");
    my $keep;
    $c->get_and_set('k', sub { $keep = $_[2]; 'd' });
    $c->get_and_set('k', sub { 'e' });
    ok(!exists $keep->{junk} && ref $keep eq 'HASH', 'a hash the callback kept is its own');
}

# ------------------------------------------------ closed from inside a call
{
    my $c = FMTest::new_cache(num_pages => 3, serializer => '');
    package Closer {
        use overload '""' => sub { $_[0]{cache}->cleanup; 'closer-key' }, fallback => 1;
    }
    my $obj = bless { cache => $c }, 'Closer';
    is(in_child(sub {
        my $ok = eval { $c->get($obj); 1 };
        !$ok && $@ ne '';
    }), 'ok', 'a key whose stringification closes the cache: a clean croak');
    for my $m (qw(get set exists remove get_and_set)) {
        my $d = FMTest::new_cache(num_pages => 3, serializer => '');
        my $o = bless { cache => $d }, 'Closer';
        my @args = $m eq 'set' ? ($o, 'v') : $m eq 'get_and_set' ? ($o, sub { 'v' }) : ($o);
        is(in_child(sub { my $ok = eval { $d->$m(@args); 1 }; 1 }), 'ok',
           "$m with a key that closes the cache: no crash");
    }

    # A repair warning is passed on after the call's work is done; a
    # __WARN__ handler that closes the cache there must not make the call
    # read the freed handle.
    for my $m (qw(get set exists remove get_and_set multi_get multi_set)) {
        my $d = FMTest::new_cache(num_pages => 1, page_size => 8192, serializer => '');
        $d->set("w$_", "v$_") for 1 .. 10;
        damage_page($d, 0);
        my @args = $m eq 'set' ? ('w1', 'x') : $m eq 'get_and_set' ? ('w1', sub { 'y' })
                 : $m eq 'multi_get' ? ('p', ['a']) : $m eq 'multi_set' ? ('p', { a => 1 })
                 : ('w1');
        my $r = in_child(sub {
            my $warned = 0;
            local $SIG{__WARN__} = sub { $warned++; $d->cleanup };
            eval { $d->$m(@args); 1 };
            my $after = eval { $d->get('w2'); 1 } ? 'worked' : $@;
            $warned >= 1 && $after ne 'worked';
        });
        is($r, 'ok', "$m: a __WARN__ handler closing the cache on a repair warning");
    }
}

# A damaged page magic makes the next locker repair the page (with a warning).
sub damage_page {
    my ($c, $page) = @_;
    my $off = FMTest::page_off($c->{page_size}, $page);
    open my $fh, '+<:raw', $c->{share_file} or die "$c->{share_file}: $!";
    sysseek($fh, $off, 0) or die "seek: $!";
    syswrite($fh, pack('L', 0xDEADBEEF)) == 4 or die "write: $!";
    close $fh;
}

# ------------------------------------------------ keys changed meanwhile
for my $cfg (['fast', serializer => ''], ['general', serializer => '', write_cb => sub { }]) {
    my ($name, %opt) = @$cfg;
    my $c = FMTest::new_cache(num_pages => 5, %opt);
    is(in_child(sub {
        $c->get_and_set('orig', sub { $_[0] = 'changed' x 50; 'v1' });
        $c->get_and_set('orig2', sub { substr($_[0], 0, 1) = 'X'; 'v2' });
        my $k = 'orig3';
        $c->get_and_set($k, sub { $k = 'other' x 100; 'v3' });
        1;
    }), 'ok', "$name: get_and_set callbacks changing the key: no crash");
    $c->get_and_set('orig', sub { $_[0] = 'changed' x 50; 'v1' });
    $c->get_and_set('orig2', sub { substr($_[0], 0, 1) = 'X'; 'v2' });
    my $k = 'orig3';
    $c->get_and_set($k, sub { $k = 'other' x 100; 'v3' });
    is($k, 'other' x 100, "$name: (the closure did change the caller's variable)");
    is_deeply([map { $c->get($_) } qw(orig orig2 orig3)], [qw(v1 v2 v3)],
              "$name: each value is stored under the key as it was passed");
    is_deeply([sort $c->get_keys(0)], [qw(orig orig2 orig3)],
              "$name: get_keys agrees with get (no entry under a changed key)");
    my $var = 'mine';
    $c->get_and_set($var, sub { $_[0] = 'x'; 1 });
    is($var, 'mine', "$name: \$_[0] is a copy, as in the reference");

    # multi_set's page key, and its value SVs, changed by the serializer
    my $pk = 'page';
    my $d = FMTest::new_cache(num_pages => 5, %opt,
        serializer => [sub { $pk = 'moved' x 200; Storable::nfreeze($_[0]) }, sub { Storable::thaw($_[0]) }]);
    $d->multi_set($pk, { map { ("k$_" => [$_]) } 1 .. 20 });
    is_deeply($d->multi_get('page', ['k1', 'k20']), { k1 => [1], k20 => [20] },
              "$name: multi_set keeps the page key it was given");
}

# ------------------------------------------------ tied expiry arguments
package TiedSpec {
    sub TIESCALAR { my ($class, $v) = @_; bless { v => $v, n => 0 }, $class }
    sub FETCH { $_[0]{n}++; $_[0]{v} }
    sub STORE { $_[0]{v} = $_[1] }
}
for my $cfg (['fast', serializer => ''], ['general', serializer => '', write_cb => sub { }]) {
    my ($name, %opt) = @$cfg;
    my $c = FMTest::new_cache(%opt);
    tie my $spec, 'TiedSpec', '10s';
    $c->set('t', 'v', $spec);
    ok(tied($spec)->{n} >= 1, "$name: set FETCHes a tied expiry");
    $c->multi_set('mp', { a => 1 }, $spec);
    tie my $opts_spec, 'TiedSpec', 20;
    $c->set('o', 'v', { expire_time => $opts_spec });
    Cache::FastMmap::_set_time_override($T0 + 5);
    is_deeply([$c->get('t'), $c->multi_get('mp', ['a'])->{a}, $c->get('o')], ['v', 1, 'v'],
              "$name: not expired before its time");
    Cache::FastMmap::_set_time_override($T0 + 11);
    ok(!defined $c->get('t'), "$name: set with a tied expiry expires");
    ok(!exists $c->multi_get('mp', ['a'])->{a}, "$name: multi_set with a tied expiry expires");
    is($c->get('o'), 'v', "$name: ... a longer one not yet");
    Cache::FastMmap::_set_time_override($T0 + 21);
    ok(!defined $c->get('o'), "$name: expire_time from a tied scalar honoured");
    Cache::FastMmap::_set_time_override($T0);
}

done_testing;
