# CHI's own FastMmap driver test class (CHI::t::Driver::FastMmap, shipped
# by Debian's libchi-perl) run against this build, with AUTHOR_TESTING=1 so
# that its multi-process and slow expiry tests run too.  CHI reads
# Cache::FastMmap's object fields and geometry directly and relies on $@
# being left alone by successful calls (SPEC 6).
#
# The class runs twice: with the default geometry, and with every cache in
# one 256k page (xt/lib/XTChiOnePage.pm), where get_keys order is the order
# inside a page.  CHI's size-aware caches discard in get_keys order, and its
# test_size_awareness_with_subcaches failed in about one process in 25 with
# one page until get_keys listed each page newest-stored first (issue 16).
# That method is then repeated: in fresh processes as CHI runs it (its
# Memory l1 cache breaks LRU ties in Perl's per-process hash order), and
# under many explicit, replayable tie orders (XTChiOnePage::tie_order).

use strict;
use warnings;

use lib 't/lib';
use FMTest;    # loads OUR Cache::FastMmap first: CHI then uses it
use lib 'xt/lib';
use XTServer;

use POSIX ();
use Test::More;

# Test::Class collects test methods at CHECK time: load everything in BEGIN.
my $pm;
BEGIN {
    XTServer::time_limit(600);
    # Only look for CHI here: CHI::Test must load Log::Any::Test before CHI.
    XTServer::need('CHI (Debian package libchi-perl)', XTServer::installed('CHI'));
    for my $m (qw(Test::Class Test::Deep Test::Exception Test::Warn)) {
        XTServer::need("$m (needed by CHI's test classes)", XTServer::have_module($m));
    }
    XTServer::need("CHI's driver test classes (CHI::t::Driver::FastMmap)",
        XTServer::installed('CHI::t::Driver::FastMmap'));
    require CHI::t::Driver::FastMmap;
    require XTChiOnePage;
    $pm = $INC{'Cache/FastMmap.pm'};
}

$ENV{AUTHOR_TESTING} = 1;

# An object, not the class name: that would also run its subclasses.
Test::Class->runtests(CHI::t::Driver::FastMmap->new);

# What the class ran must have been our build, with the author-only tests.
my $tb = Test::More->builder;
my $fm = CHI->new(driver => 'FastMmap', root_dir => FMTest::tmpdir())->fm_cache;
is(ref($fm), 'Cache::FastMmap', "CHI's FastMmap driver wraps a Cache::FastMmap object");
is($INC{'Cache/FastMmap.pm'}, $pm, 'the one FMTest vetted before CHI was loaded');
my @problems = (FMTest::build_problems(), FMTest::so_problems());
is(scalar(@problems), 0, 'which is still our Rust-core build') or diag(join '; ', @problems);
my @skips = grep { $_->{type} eq 'skip' } $tb->details;
my @author_skips = grep { ($_->{reason} // '') =~ /author/i } @skips;
is(scalar(@author_skips), 0, 'no test was skipped as author-only (AUTHOR_TESTING took effect)')
    or diag(join ', ', map { $_->{name} // '?' } @author_skips);
# CHI's class may also skip for reasons of its own (an optional module of
# CHI missing); CI installs everything, so there no skip at all is allowed.
if ($ENV{FASTMMAP_CI}) {
    is(scalar(@skips), 0, 'FASTMMAP_CI: the driver suite skipped nothing')
        or diag(join ', ', map { ($_->{name} // '?') . ': ' . ($_->{reason} // '') } @skips);
}
my $ran = grep { $_->{type} eq '' && $_->{ok} } $tb->details;
cmp_ok($ran, '>', 100, "the driver suite ran ($ran passing tests)");

# ------------------------------------------------------------ one page

my $METHOD = 'test_size_awareness_with_subcaches';
my @CHILD_INC = (XTServer::perl_inc(), '-I' . XTServer::ROOT() . '/t/lib');

# child_run(\%env, $code) -> ($exit_status, $output): a fresh perl that loads
# our build through FMTest (it bails out otherwise), then CHI's classes.
sub child_run {
    my ($env, $code) = @_;
    my $pid = open(my $fh, '-|') // die "fork: $!";
    if (!$pid) {
        open(STDERR, '>&', \*STDOUT);
        @ENV{ keys %$env } = values %$env;
        $ENV{FMTEST_WATCHDOG} = 120;    # the child's own bound
        exec($^X, @CHILD_INC, '-MFMTest', '-e',
            'BEGIN { require CHI::t::Driver::FastMmap; require XTChiOnePage } ' . $code)
            or POSIX::_exit(127);
    }
    my $out = do { local $/; <$fh> } // '';
    close($fh);
    return ($?, $out);
}

# The whole class with one page, in a process of its own: CHI's test_stats
# needs CHI's global statistics to start empty.
{
    my ($status, $out) = child_run({ AUTHOR_TESTING => 1 },
        'Test::Class->runtests(XTChiOnePage->new); '
        . 'my $c = XTChiOnePage->new->new_cache->fm_cache; '
        . 'print "# XT-GEOMETRY $c->{num_pages} x $c->{page_size}\\n"');
    my @not_ok = $out =~ /^(not ok \d+.*)$/mg;
    my $passed = () = $out =~ /^ok \d+ - /mg;
    my @skipped = $out =~ /^ok \d+ # skip(.*)$/mg;
    is($status, 0, 'one page: the driver suite passed') or diag(join "\n", @not_ok);
    like($out, qr/^# XT-GEOMETRY 1 x 262144$/m, '... with one page of 256k');
    cmp_ok($passed, '>', 100, "... and ran ($passed passing tests)");
    is(scalar(grep { /author/i } @skipped), 0, '... author tests included');
    is(scalar(@skipped), 0, 'FASTMMAP_CI: ... nothing skipped') or diag(join "\n", @skipped)
        if $ENV{FASTMMAP_CI};
}

# ------------------------------------- the size-aware subcache test, again

# As CHI runs it: each process has its own hash order, so its own l1 choices.
my $RUNS = 30;
my ($failed, $passes, $first_bad) = (0, 0);
for my $i (1 .. $RUNS) {
    my ($status, $out) = child_run({ TEST_METHOD => "^$METHOD\$" },
        'Test::Class->runtests(XTChiOnePage->new)');
    my $oks = () = $out =~ /^ok \d+ - FastMmap:l1_cache keys = /mg;
    if ($status == 0 && $oks == 2) { $passes++ }
    else { $failed++; $first_bad //= $out }
}
is($failed, 0, "one page: $METHOD passed in $passes of $RUNS fresh processes")
    or diag($first_bad);

# Every l1 choice, not just the likely ones: seeded tie orders, each run
# replayable.  start_slots 167 is a slot table where Debian's 1.57 fails
# about one seed in seven (its order follows its hash); ours must not care.
my $SEEDS = 300;
for my $extra ('', 'start_slots => 167') {
    my ($status, $out) = child_run({ XT_SEEDS => $SEEDS }, <<"EOF");
use Test::More;
push \@XTChiOnePage::GEOMETRY, $extra;
my \$t = XTChiOnePage->new;
my \$fails = sub { scalar grep { !\$_ } Test::More->builder->summary };
my (\@bad, \$runs);
for my \$seed (1 .. \$ENV{XT_SEEDS}) {
    XTChiOnePage::tie_order(\$seed);
    my \$before = \$fails->();
    \$t->$METHOD;
    push \@bad, \$seed if \$fails->() > \$before;
    \$runs++;
}
print "# XT-RUNS \$runs XT-BAD-SEEDS \@bad\\n";
done_testing;
EOF
    my $label = 'one page' . ($extra ? ", $extra" : '');
    my ($runs, $bad) = $out =~ /^# XT-RUNS (\d+) XT-BAD-SEEDS ?(.*)$/m;
    is($runs, $SEEDS, "$label: $METHOD ran under $SEEDS l1 tie orders")
        or diag($out);
    is($bad, '', "$label: ... and passed under every one (failing seeds replay with "
        . "XTChiOnePage::tie_order)") or diag("failing seeds: $bad");
    is($status, 0, "$label: ... and its perl exited cleanly") or diag($out);
}

done_testing;
