#!perl
# Corrupt share files never crash (issue 5, DESIGN 4-5). A closed cache file
# is damaged in one region per round -- the file header, a page's lock entry,
# a page header, a slot table or the item area -- by flipping bits, bytes or
# whole u32 words, then a CHILD process reopens it and runs get / set /
# get_keys / remove / purge. The child must never die by a signal
# (SIGSEGV/SIGBUS), never hang (kernel alarm), and never croak: a damaged
# header gives a fresh file (new inode), a damaged page is repaired with the
# documented warning "page N of FILE reinitialised: REASON" and counted in
# repaired_pages. With test_file => 1 the damage is found at open, with a
# summary warning.
#
# Rounds: 150 by default, $ENV{FASTMMAP_CORRUPT_ROUNDS} for more;
# $ENV{FASTMMAP_CORRUPT_SEED} replays a run.
use strict;
use warnings;
use lib 't/lib';
use FMTest;
use Test::More;
use Storable ();

my $ROUNDS = $ENV{FASTMMAP_CORRUPT_ROUNDS} || 150;
my $SEED = $ENV{FASTMMAP_CORRUPT_SEED} // (time ^ $$);
srand($SEED);
diag("corrupt-file seed $SEED (FASTMMAP_CORRUPT_SEED=$SEED replays it)");

# The file layout (DESIGN 4-5, FMTest's lock_entry_off / page_off): the
# file header, then every page's 64-byte lock entry, each followed by its
# page; a page is a 32-byte header (magic, num_slots, free_slots, old_slots,
# free_data, free_bytes, nreads, nreadhits), the slot table, then the items.
my $HEADER_CHECKED = 80;      # the header fields + checksum
my %GEOM = (num_pages => 5, page_size => 8192);
my $NP = $GEOM{num_pages};
my $PS = $GEOM{page_size};
my $FILE_SIZE = FMTest::file_size($NP, $PS);

my $dir = FMTest::tmpdir();
my $file = "$dir/corrupt-cache";

# Values carry their key and a checksum, so a value that is returned for
# the wrong key, or torn, is recognisable.
sub value_for {
    my ($key, $gen) = @_;
    my $body = "$key|$gen|" . ('x' x (length($key) * 3 % 40));
    return "$body|" . unpack('%32C*', $body);
}
sub value_ok {
    my ($key, $v) = @_;
    return 0 unless defined $v && $v =~ /\A(\Q$key\E\|[^|]*\|x*)\|(\d+)\z/;
    return unpack('%32C*', $1) == $2 ? 1 : 0;
}

# ------------------------------------------------------- a pristine file
my @KEYS = map { "key$_" } 1 .. 120;
my %PAGE_OF;
{
    unlink $file;
    my $c = Cache::FastMmap->new(share_file => $file, %GEOM, serializer => '',
                                 unlink_on_exit => 0);
    $c->set($_, value_for($_, 0)) for @KEYS;
    $c->remove("key$_") for grep { $_ % 7 == 0 } 1 .. 120;   # deleted slots too
    $PAGE_OF{$_} = (Cache::FastMmap::fc_hash($c->{Cache}, $_))[0] for @KEYS;
    is($c->repaired_pages, 0, 'pristine file: nothing repaired');
}
is(-s $file, $FILE_SIZE, 'file size is header + (lock entry + page) per page as documented');
my $PRISTINE = do { local $/; open my $fh, '<:raw', $file or die "$file: $!"; <$fh> };
my @LIVE = grep { !/^key(\d+)\z/ || $1 % 7 } @KEYS;

sub page_off { FMTest::page_off($PS, $_[0]) }
sub u32_at { unpack 'L', substr($_[0], $_[1], 4) }

# Regions of the pristine image, as [name, page (or undef), start, length]:
# the header, and for every page its lock entry (no longer one contiguous
# lock table: each entry sits just before its page), page header, slot table
# and item area.
sub regions {
    my @r = (['header', undef, 0, $HEADER_CHECKED]);
    for my $p (0 .. $NP - 1) {
        my $o = page_off($p);
        my $slots = u32_at($PRISTINE, $o + 4);
        my $free_data = u32_at($PRISTINE, $o + 16);
        push @r, ['lock entry', $p, FMTest::lock_entry_off($PS, $p), FMTest::LOCK_ENTRY_BYTES],
                 ['page header', $p, $o, 32],
                 ['slot table', $p, $o + 32, FMTest::SLOT_BYTES * $slots],
                 ['items', $p, $o + FMTest::slot_pos($slots), $free_data - FMTest::slot_pos($slots)];
    }
    return @r;
}
my @REGIONS = regions();

# One random change inside [start, start+len): returns the new image.
my @WORDS = (0, 1, 2, 3, 4, 0xFFFFFFFF, 0x7FFFFFFF, 0x80000000, $PS - 1, $PS, $PS + 4,
             $PS - 24, 32, 36, 4096, FMTest::LOCK_ENTRY_BYTES + $PS, 0x4650_4731);
sub damage {
    my ($img, $start, $len) = @_;
    my $kind = int rand 6;
    my $at = $start + int rand $len;
    if ($kind == 0) {                       # flip one bit
        substr($img, $at, 1) = chr(ord(substr($img, $at, 1)) ^ (1 << int rand 8));
    }
    elsif ($kind == 1) {                    # a few random bytes
        for (1 .. 1 + int rand 4) {
            my $o = $start + int rand $len;
            substr($img, $o, 1) = chr int rand 256;
        }
    }
    elsif ($kind == 2 || $kind == 3) {      # an aligned u32 word: special or random value
        my $w = $start + 4 * int(rand($len / 4));
        $w = $start if $w + 4 > $start + $len;
        my $old = u32_at($img, $w);
        my $new = $kind == 2 ? $WORDS[rand @WORDS]
                : (int rand 3) ? int rand 2**32 : ($old + (rand() < 0.5 ? 1 : -1)) % 2**32;
        substr($img, $w, 4) = pack 'L', $new;
    }
    elsif ($kind == 4) {                    # a run of 0x00 or 0xFF
        my $l = 1 + int rand 64;
        $l = $start + $len - $at if $at + $l > $start + $len;
        substr($img, $at, $l) = (rand() < 0.5 ? "\0" : "\xFF") x $l;
    }
    else {                                  # bytes copied from elsewhere in the file
        my $l = 4 + int rand 60;
        $l = $start + $len - $at if $at + $l > $start + $len;
        my $from = int rand(length($img) - $l);
        substr($img, $at, $l) = substr($img, $from, $l);
    }
    return $img;
}

sub write_image {
    my ($img) = @_;
    unlink $file;
    open my $fh, '>:raw', $file or die "$file: $!";
    print $fh $img or die "write $file: $!";
    close $fh or die "close $file: $!";
    return (stat $file)[1];
}

# Runs the workload in a bounded child; returns its report (a hash) and status.
my $report_file = "$dir/report";
sub exercise {
    my (%o) = @_;
    unlink $report_file;
    my $st = FMTest::run_in_child(30, sub {
        my (%r, @warn);
        $r{errors} = [];
        local $SIG{__WARN__} = sub { push @warn, $_[0] };
        my $step = sub {
            my ($name, $code) = @_;
            eval { $code->(); 1 } or push @{ $r{errors} }, "$name: $@";
        };
        my $c;
        $step->(new => sub {
            $c = Cache::FastMmap->new(share_file => $file, %GEOM, serializer => '',
                                      unlink_on_exit => 0, ($o{test_file} ? (test_file => 1) : ()));
        });
        if ($c) {
            $r{ino} = (stat $file)[1];
            $r{open_warnings} = [@warn];
            my (@bad, %got);
            $step->(get => sub {
                for my $k (@KEYS) {
                    my $v = $c->get($k);
                    next unless defined $v;
                    $got{$k} = 1;
                    push @bad, $k unless value_ok($k, $v);
                }
            });
            $r{bad_values} = \@bad;
            $r{found} = [sort keys %got];
            $step->(get_keys => sub {
                my @k0 = $c->get_keys(0);
                my @k2 = $c->get_keys(2);
                $r{get_keys} = scalar @k0;
                push @{ $r{errors} }, "get_keys(2) returned a non-hash" if grep { ref ne 'HASH' } @k2;
            });
            $step->(set => sub {
                my @failed;
                for my $i (1 .. 40) {
                    my $k = "new$i";
                    $c->set($k, value_for($k, 1));
                    my $v = $c->get($k);
                    push @failed, $k unless defined $v && $v eq value_for($k, 1);
                }
                # overwrite old keys too (exercises delete + reuse of damaged slots)
                $c->set($_, value_for($_, 2)) for @KEYS[0 .. 30];
                $r{set_failed} = \@failed;
            });
            $step->(get_and_set => sub {
                $c->get_and_set('counter', sub { ($_[1] // 0) + 1 }) for 1 .. 5;
                $r{counter} = $c->get('counter');
            });
            $step->(remove => sub { $c->remove($_) for @KEYS[31 .. 60] });
            $step->(purge => sub { $c->purge });
            $step->(clear => sub { $c->clear; $r{after_clear} = scalar(() = $c->get_keys(0)) });
            $r{repaired} = $c->repaired_pages;
        }
        $r{warnings} = \@warn;
        Storable::nstore(\%r, $report_file);
        return 0;
    });
    my $r = -e $report_file ? Storable::retrieve($report_file) : undef;
    return ($r, $st);
}

# ------------------------------------------------------------ the rounds
my (%fail, %seen_region, $repairs, $fresh, $summaries);
my $note_fail = sub {
    my ($what, $detail) = @_;
    push @{ $fail{$what} }, $detail;
};

for my $round (1 .. $ROUNDS) {
    my $reg = $REGIONS[($round - 1) % @REGIONS];   # every region, in turn
    my ($rname, $page, $start, $len) = @$reg;
    next if $len <= 0;
    my $img = $PRISTINE;
    $img = damage($img, $start, $len) for 1 .. 1 + int rand 3;
    next if $img eq $PRISTINE;
    $seen_region{$rname}++;
    my $test_file = $round % 4 == 0;
    my $old_ino = write_image($img);
    my ($r, $st) = exercise(test_file => $test_file);
    my $tag = "round $round ($rname" . (defined $page ? " of page $page" : '')
            . ($test_file ? ', test_file' : '') . ')';
    # The page whose contents were damaged (a lock entry's page is not: no
    # repair and no wrong value is allowed for it).
    my $hurt = $rname eq 'lock entry' ? undef : $page;

    if (FMTest::describe_status($st) ne 'exit 0' || !$r) {
        $note_fail->(crash => "$tag: child " . FMTest::describe_status($st));
        next;
    }
    $note_fail->(croak => "$tag: @{ $r->{errors} }") if @{ $r->{errors} };
    $note_fail->(set => "$tag: set/get failed for @{ $r->{set_failed} }")
        if $r->{set_failed} && @{ $r->{set_failed} };
    $note_fail->(counter => "$tag: counter is " . ($r->{counter} // 'undef'))
        unless ($r->{counter} // '') eq '5';
    $note_fail->(clear => "$tag: get_keys after clear gave $r->{after_clear}")
        if ($r->{after_clear} // 0) != 0;

    my @page_warn = grep { /^page \d+ of / } @{ $r->{warnings} };
    my @other_warn = grep { !/^page \d+ of / && !/^test_file: / } @{ $r->{warnings} };
    $note_fail->(warning => "$tag: unexpected warning: $other_warn[0]") if @other_warn;
    for my $w (@page_warn) {
        $note_fail->(warning => "$tag: badly formed warning: $w")
            unless $w =~ /^page (\d+) of \Q$file\E reinitialised: \S.*/;
        $note_fail->(warning => "$tag: page $1 repaired, but page " . ($hurt // 'none') . " was damaged")
            if $w =~ /^page (\d+) / && (!defined $hurt || $1 != $hurt);
    }
    $note_fail->(count => "$tag: repaired_pages $r->{repaired} but " . @page_warn . " warnings")
        unless ($r->{repaired} // -1) == @page_warn;
    $repairs++ if @page_warn;

    # Values read from pages nobody damaged must be exact; a damaged value
    # area may give a wrong value (there are no value checksums), but only
    # for keys of the damaged page.
    my @wrong = grep { !defined $hurt || $PAGE_OF{$_} != $hurt } @{ $r->{bad_values} };
    $note_fail->(value => "$tag: wrong values for @wrong") if @wrong;

    if ($rname eq 'header') {
        # Any change of the checked header bytes means "not our file": replaced.
        $fresh++;
        $note_fail->(header => "$tag: damaged header not replaced (same inode)")
            if $r->{ino} == $old_ino;
        $note_fail->(header => "$tag: old content still visible in a fresh file: @{ $r->{found} }[0..2]")
            if @{ $r->{found} };
        $note_fail->(header => "$tag: a fresh file needed repairs") if $r->{repaired};
    }
    else {
        $note_fail->(inode => "$tag: file replaced although its header was intact")
            if $r->{ino} != $old_ino;
        if ($rname eq 'lock entry') {
            # The sole opener re-initialises the lock words; a stray
            # "being mutated" marker only causes a (passing) validation.
            $note_fail->(lock => "$tag: pages repaired") if $r->{repaired};
            my %found = map { $_ => 1 } @{ $r->{found} };
            my @lost = grep { !$found{$_} } @LIVE;
            $note_fail->(lock => "$tag: keys lost: @lost[0..($#lost < 4 ? $#lost : 4)]") if @lost;
        }
        else {
            # Keys of undamaged pages are all there.
            my %found = map { $_ => 1 } @{ $r->{found} };
            my @lost = grep { !$found{$_} && $PAGE_OF{$_} != $hurt } @LIVE;
            $note_fail->(lost => "$tag: keys of undamaged pages lost: @lost") if @lost;
        }
    }
    if ($test_file && @page_warn) {
        my @sum = grep { /^test_file: / } @{ $r->{warnings} };
        $summaries++ if @sum;
        $note_fail->(test_file => "$tag: no summary warning after a repair at open") unless @sum;
        $note_fail->(test_file => "$tag: bad summary: $sum[0]")
            if @sum && $sum[0] !~ /^test_file: 1 of $NP pages of \Q$file\E were repaired/;
        $note_fail->(test_file => "$tag: the repair was not done at open")
            unless grep { /^page \d+ of / } @{ $r->{open_warnings} };
    }
}

for my $what (qw(crash croak set counter clear warning count value header inode lock lost test_file)) {
    my $f = $fail{$what} || [];
    ok(!@$f, "no failures of kind '$what'") or diag(join "\n", @$f[0 .. ($#$f < 9 ? $#$f : 9)]);
}
is_deeply([sort keys %seen_region], [sort 'header', 'lock entry', 'page header', 'slot table', 'items'],
          'every region was damaged in some round');
ok($repairs, "some rounds repaired a page ($repairs)");
ok($fresh, "some rounds replaced a damaged header ($fresh)");

# ---------------------------------------------------- deterministic cases
# Damage that must be detected: each gives exactly one repair of the page,
# with the documented warning, on first use (and at open with test_file).
my @certain = (
    ['bad page magic',       sub { 0 },  sub { 0xDEADBEEF }],
    ['num_slots too large',  sub { 4 },  sub { 0xFFFFFFFF }],
    ['num_slots zero',       sub { 4 },  sub { 0 }],
    ['free_slots > slots',   sub { 8 },  sub { u32_at($PRISTINE, $_[0] + 4) + 1 }],
    ['free_data past page',  sub { 16 }, sub { $PS + 4 }],
    ['free_bytes mismatch',  sub { 20 }, sub { u32_at($PRISTINE, $_[0] + 20) + 8 }],
);
for my $test_file (0, 1) {
    for my $case (@certain) {
        my ($name, $field, $value) = @$case;
        my $p = 2;
        my $o = page_off($p);
        my $img = $PRISTINE;
        substr($img, $o + $field->($o), 4) = pack 'L', $value->($o);
        write_image($img);
        my ($r, $st) = exercise(test_file => $test_file);
        my $tag = "$name" . ($test_file ? ' (test_file)' : '');
        is(FMTest::describe_status($st), 'exit 0', "$tag: child survived") or next;
        is_deeply($r->{errors}, [], "$tag: no croak");
        my @pw = grep { /^page \d+ of / } @{ $r->{warnings} };
        is(scalar @pw, 1, "$tag: one page warning") or diag(explain $r->{warnings});
        like($pw[0] // '', qr/^page $p of \Q$file\E reinitialised: \S/, "$tag: the documented warning");
        is($r->{repaired}, 1, "$tag: repaired_pages is 1");
        if ($test_file) {
            ok((grep { /^test_file: 1 of $NP pages of \Q$file\E were repaired/ } @{ $r->{warnings} }),
               "$tag: summary warning");
        }
    }
}

# A slot pointing outside the item area (only a full validation or the
# probe that meets it notices): test_file finds it at open.
{
    my $p = 1;
    my $o = page_off($p);
    my $slots = u32_at($PRISTINE, $o + 4);
    my ($used) = grep { u32_at($PRISTINE, $o + FMTest::slot_pos($_)) > 1 } 0 .. $slots - 1;
    my $img = $PRISTINE;
    substr($img, $o + FMTest::slot_pos($used), 4) = pack 'L', $PS + 64;
    write_image($img);
    my ($r, $st) = exercise(test_file => 1);
    is(FMTest::describe_status($st), 'exit 0', 'wild slot offset: child survived');
    like(join('', @{ $r->{open_warnings} || [] }), qr/^page $p of \Q$file\E reinitialised: .*\n.*^test_file: 1 of $NP pages/ms,
         'wild slot offset: repaired at open with test_file, summary warning');
    my @lost = grep { $PAGE_OF{$_} != $p && !{ map { $_ => 1 } @{ $r->{found} } }->{$_} } @LIVE;
    is_deeply(\@lost, [], 'wild slot offset: other pages untouched');
}

# Truncated, extended and all-garbage files of the right size: replaced.
for my $case (['truncated', substr($PRISTINE, 0, page_off(0) + 100)],
              ['extended', $PRISTINE . ("\0" x 4096)],
              ['random bytes', join('', map { chr int rand 256 } 1 .. $FILE_SIZE)],
              ['all 0xFF', "\xFF" x $FILE_SIZE]) {
    my ($name, $img) = @$case;
    my $ino = write_image($img);
    my ($r, $st) = exercise();
    is(FMTest::describe_status($st), 'exit 0', "$name file: child survived") or next;
    is_deeply($r->{errors}, [], "$name file: no croak");
    isnt($r->{ino}, $ino, "$name file: replaced by a fresh file");
    is(-s $file, $FILE_SIZE, "$name file: the fresh file has the right size");
}

done_testing;
