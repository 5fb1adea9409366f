package Cache::FastMmap;

# Perl layer of the Rust-core Cache::FastMmap.
#
# This file holds the policy: option parsing, serialisation, compression,
# callbacks, write-back and the object lifecycle.  Every page operation is
# done by the engine through the fc_* XS functions (xs/FastMmap.xs).
#
# Locking discipline used throughout: a method turns its key and value into
# bytes, hashes the key, and takes the one page lock this object may hold
# with fc_lock_scoped, whose returned guard releases the lock however its
# scope is left (see "Reading" below).  Internal evals always run under
# "local $@" so that a successful call never changes the caller's $@.

use 5.008001;
use strict;
use warnings;
use bytes;

use Carp ();
use File::Spec ();
use Scalar::Util ();

our $VERSION = '2.00';
our $IMPLEMENTATION = 'rust';

require XSLoader;
{
  # Loaded from a source checkout (prove -l t): the XS object is the one
  # `make` built in that checkout's blib/, never an installed copy.
  local @INC = @INC;
  if (__FILE__ =~ m{\A(?:(.*)[/\\])?lib[/\\]Cache[/\\]FastMmap\.pm\z}s) {
    my $Arch = File::Spec->catdir(defined $1 ? $1 : File::Spec->curdir, 'blib', 'arch');
    unshift @INC, $Arch
      if -d File::Spec->catdir($Arch, qw(auto Cache FastMmap));
  }
  XSLoader::load('Cache::FastMmap', $VERSION);
}

# Caches created with empty_on_exit, keyed by "$Self"; the values are weak
# references (see new, DESTROY and END).
our %LiveCaches;

# Every live object (weak references), for CLONE.
our %AllCaches;

use constant FC_ISDIRTY => 1;

# Process-wide clock override used by _time (and mirrored into the engine).
my $time_override;

# Seconds per unit for parse_expire_time.
my %UnitSeconds = (
  ''  => 1,
  's' => 1,
  'm' => 60,
  'h' => 3600,
  'd' => 86400,
  'w' => 604800,
);

# Multipliers for the size suffixes accepted by cache_size and page_size.
my %SizeSuffix = (k => 1024, m => 1024 * 1024);

# The engine's page header is 32 bytes and every slot takes 8 bytes (the
# item's offset, and a tag and access time that let reads skip other items
# and update the LRU time without the lock).  Beyond that a page must have
# room for at least one small item: twice the 24-byte item header, the same
# allowance the engine itself checks.
my $PAGE_HEADER_BYTES = 32;
my $SLOT_BYTES        = 8;
my $DEFAULT_START_SLOTS = 44;
my $MIN_ITEM_BYTES    = 48;
my $MAX_PAGE_SIZE     = 2**30;

my $MODSEQ_MAX = '18446744073709551615';

#----------------------------------------------------------------------------
# Small helpers
#----------------------------------------------------------------------------

# require a module at run time; returns '' on success, the error otherwise.
sub _load_module {
  my $Module = shift;
  local $@;
  return '' if eval "require $Module; 1";
  return $@ || "unknown error while loading $Module";
}

# Validate a modseq option, returning a decimal string the XS turns into a
# UV (values above 2**64-1 saturate).  $Who is 'set' or 'remove'.
sub _modseq_arg {
  my ($ModSeq, $Who) = @_;
  die "$Who modseq option must be an unsigned integer"
    unless !ref($ModSeq) && $ModSeq =~ /^([0-9]+)$/;
  my $Digits = $1;
  $Digits =~ s/^0+(?=[0-9])//;
  if (length($Digits) > length($MODSEQ_MAX)
      || (length($Digits) == length($MODSEQ_MAX) && $Digits gt $MODSEQ_MAX)) {
    return $MODSEQ_MAX;
  }
  return $Digits;
}

# The absolute expire_on for set/multi_set options; -1 asks the engine to
# apply the cache default.
sub _expire_on_from {
  my $Opts = shift;
  return -1 unless $Opts;
  return $Opts->{expire_on} if defined $Opts->{expire_on};
  return parse_expire_time($Opts->{expire_time}, _time())
    if defined $Opts->{expire_time};
  return -1;
}

# Turn a stored value back into what the user stored (reverse of
# compress(serialize(\$value))).  Undef is passed through untouched.
sub _thaw {
  my ($Self, $Val) = @_;
  return $Val unless defined $Val;
  $Val = $Self->{uncompress}->($Val) if $Self->{compress};
  $Val = ${ $Self->{deserialize}->($Val) } if $Self->{deserialize};
  return $Val;
}

# Check a numeric size option.  Returns the number (suffix applied when
# $AllowSuffix); croaks with a message naming the option otherwise.
sub _size_arg {
  my ($Name, $Value, $AllowSuffix) = @_;
  my $Num = $Value;
  my $Mult = 1;
  if (!ref($Num) && $AllowSuffix && $Num =~ s/([km])$//i) {
    $Mult = $SizeSuffix{lc $1};
  }
  if (ref($Num) || !Scalar::Util::looks_like_number($Num)) {
    Carp::croak("Cache::FastMmap: invalid $Name '$Value': not a number"
      . ($AllowSuffix ? " (an optional k or m suffix is allowed)" : ""));
  }
  $Num *= $Mult;
  if ($Num != $Num || $Num == 9**9**9 || $Num == -9**9**9) {
    Carp::croak("Cache::FastMmap: invalid $Name '$Value': not a finite number");
  }
  if ($Num < 0) {
    Carp::croak("Cache::FastMmap: invalid $Name '$Value': must not be negative");
  }
  return $Num;
}

#----------------------------------------------------------------------------
# Constructor
#----------------------------------------------------------------------------

sub new {
  my $Proto = shift;
  my $Class = ref($Proto) || $Proto;
  my %Args = ref($_[0]) eq 'HASH' ? %{ $_[0] } : @_;

  my $Self = bless {}, $Class;

  # -- share_file
  my $share_file = $Args{share_file};
  if (!$share_file) {
    $share_file = File::Spec->catfile(File::Spec->tmpdir, "sharefile")
      . "-$$-" . time . "-" . int(rand(100000));
  }
  die "share_file argument was a reference" if ref $share_file;
  $Self->{share_file} = $share_file;

  my $permissions = $Args{permissions};

  # -- boolean flags
  my $init_file       = $Args{init_file}       ? 1 : 0;
  my $test_file       = $Args{test_file}       ? 1 : 0;
  my $enable_stats    = $Args{enable_stats}    ? 1 : 0;
  my $catch_deadlocks = $Args{catch_deadlocks} ? 1 : 0;

  # -- unlink_on_exit defaults to "we are about to create the file"
  $Args{unlink_on_exit} = -f $share_file ? 0 : 1
    unless CORE::exists $Args{unlink_on_exit};

  # -- serializer
  my $serializer = $Args{serializer};
  $serializer = $Args{raw_values} ? '' : 'storable' unless defined $serializer;

  if ($serializer) {
    if (ref($serializer) eq 'ARRAY') {
      $Self->{serialize}   = $serializer->[0];
      $Self->{deserialize} = $serializer->[1];
    }
    elsif ($serializer eq 'storable') {
      my $Err = _load_module('Storable');
      die "Could not load serialization package: Storable : $Err" if $Err;
      $Self->{serialize}   = Storable->can('freeze');
      $Self->{deserialize} = Storable->can('thaw');
    }
    elsif ($serializer eq 'sereal') {
      my $Err = _load_module('Sereal::Encoder') || _load_module('Sereal::Decoder');
      die "Could not load serialization package: Sereal : $Err" if $Err;
      my $Encoder = Sereal::Encoder->new();
      my $Decoder = Sereal::Decoder->new();
      $Self->{serialize}   = sub { $Encoder->encode(@_) };
      $Self->{deserialize} = sub { $Decoder->decode(@_) };
    }
    elsif ($serializer eq 'json') {
      my $Err = _load_module('JSON');
      die "Could not load serialization package: JSON : $Err" if $Err;
      my $Coder = JSON->new->utf8->allow_nonref;
      $Self->{serialize}   = sub { $Coder->encode(${ $_[0] }) };
      $Self->{deserialize} = sub { \$Coder->decode($_[0]) };
    }
    else {
      die "Unrecognized value >$serializer< for `serializer` parameter";
    }
  }

  # -- compressor
  my $compressor = $Args{compressor};
  $compressor = $Args{compress} ? 'zlib' : 0 unless defined $compressor;

  if ($compressor) {
    if (ref($compressor) eq 'ARRAY') {
      $Self->{compress}   = $compressor->[0];
      $Self->{uncompress} = $compressor->[1];
    }
    elsif ($compressor eq 'zlib') {
      my $Err = _load_module('Compress::Zlib');
      die "Could not load compression package: Compress::Zlib : $Err" if $Err;
      $Self->{compress} = Compress::Zlib->can('memGzip');
      # memGunzip keeps a reference to its argument, so hand it a private
      # copy.  The closure's exact source form is relied upon by code that
      # deparses $cache->{uncompress}; keep it as it is.
      my $uncompress = Compress::Zlib->can('memGunzip');
      $Self->{uncompress} = sub { &$uncompress(my $Tmp = shift) };
    }
    elsif ($compressor eq 'lz4' || $compressor eq 'snappy') {
      my $Module = $compressor eq 'lz4' ? 'Compress::LZ4' : 'Compress::Snappy';
      my $Err = _load_module($Module);
      die "Could not load compression package: $Module : $Err" if $Err;
      $Self->{compress}   = $Module->can('compress');
      $Self->{uncompress} = $Module->can('uncompress');
    }
    else {
      die "Unrecognized value >$compressor< for `compressor` parameter";
    }
  }

  # -- empty_on_exit
  my $empty_on_exit = $Self->{empty_on_exit} = int($Args{empty_on_exit} || 0);
  if ($empty_on_exit) {
    my $Err = _load_module('Scalar::Util');
    die "Could not load Scalar::Util module: $Err" if $Err;
  }

  # -- expiry defaults (relative seconds)
  my $expire_time = $Self->{expire_time} = parse_expire_time($Args{expire_time});
  $Self->{tombstone_expire_time} = parse_expire_time($Args{tombstone_expire_time});

  # -- geometry (upstream arithmetic, plus validation of the inputs)
  my ($cache_size, $num_pages, $page_size);
  if ($Args{cache_size}) {
    $cache_size = _size_arg('cache_size', $Args{cache_size}, 1);
    Carp::croak("Cache::FastMmap: invalid cache_size '$Args{cache_size}': must be greater than zero")
      if $cache_size == 0;
    if ($Args{num_pages}) {
      $num_pages = _size_arg('num_pages', $Args{num_pages}, 0);
      Carp::croak("Cache::FastMmap: invalid num_pages '$Args{num_pages}': must be at least 1")
        if int($num_pages) < 1;
      $page_size = RoundPow2($cache_size / $num_pages);
      $page_size = 4096 if $page_size < 4096;
    }
    else {
      $page_size = $Args{page_size}
        ? _size_arg('page_size', $Args{page_size}, 1)
        : 65536;
      $page_size = 4096 if $page_size < 4096;
      $num_pages = 89;
      if ($num_pages * $page_size <= $cache_size) {
        $num_pages = $num_pages * 2 + 1 while $num_pages * $page_size <= $cache_size;
      }
      else {
        $num_pages = int(($num_pages - 1) / 2) while $num_pages * $page_size > $cache_size;
        $num_pages = $num_pages * 2 + 1;
      }
    }
  }
  else {
    $num_pages = $Args{num_pages} ? _size_arg('num_pages', $Args{num_pages}, 0) : 89;
    Carp::croak("Cache::FastMmap: invalid num_pages '$Args{num_pages}': must be at least 1")
      if int($num_pages) < 1;
    $page_size = $Args{page_size} ? _size_arg('page_size', $Args{page_size}, 1) : 65536;
    Carp::croak("Cache::FastMmap: invalid page_size '$Args{page_size}': must be at least 1")
      if $page_size < 1;
    $page_size = RoundPow2($page_size);
  }
  $cache_size = $num_pages * $page_size;
  # Deliberate deviation: a page count the engine cannot address is an error
  # naming the option the user gave, not a wrapped-around number.
  if ($num_pages > 4294967295) {
    my $Opt = $Args{cache_size} ? 'cache_size' : 'num_pages';
    Carp::croak("Cache::FastMmap: invalid $Opt '$Args{$Opt}': gives $num_pages pages,"
      . " more than the maximum of 4294967295");
  }
  @$Self{qw(cache_size num_pages page_size)} = ($cache_size, $num_pages, $page_size);

  # -- start_slots
  _size_arg('start_slots', $Args{start_slots}, 0) if $Args{start_slots};
  # The default is 44 where upstream's is 89: our slots take 8 bytes to its
  # 4, so the table starts at the same size in bytes (and grows so as to stay
  # so; see GROW_KEPT in rust/page/expunge.rs).
  my $start_slots = int($Args{start_slots} || 0) || $DEFAULT_START_SLOTS;

  # Deliberate deviation: a page must hold its header, its initial slot
  # table and at least one small item.  The reference implementation
  # corrupts memory on such geometries; we refuse them.
  {
    my $Need = $PAGE_HEADER_BYTES + $SLOT_BYTES * $start_slots + $MIN_ITEM_BYTES;
    if (int($page_size) < $Need) {
      Carp::croak("Cache::FastMmap: page_size " . int($page_size)
        . " is too small for start_slots $start_slots: a page needs at least $Need bytes"
        . " (a $PAGE_HEADER_BYTES-byte header, $SLOT_BYTES bytes per slot and room for one item);"
        . " use a larger page_size or fewer start_slots");
    }
    if (int($page_size) > $MAX_PAGE_SIZE) {
      Carp::croak("Cache::FastMmap: page_size " . int($page_size)
        . " is larger than the maximum of $MAX_PAGE_SIZE bytes");
    }
  }

  # -- callbacks and behaviour flags
  my $write_back = ($Args{write_action} || 'write_through') eq 'write_back';
  @$Self{qw(context read_cb write_cb delete_cb)}
    = @Args{qw(context read_cb write_cb delete_cb)};
  @$Self{qw(cache_not_found allow_recursive write_back)}
    = (@Args{qw(cache_not_found allow_recursive)}, $write_back);
  @$Self{qw(unlink_on_exit enable_stats)}
    = ($Args{unlink_on_exit}, $enable_stats);

  $Self->{pid} = $$;
  $Self->{tid} = _thread_id();

  # -- hand everything to the engine
  $Self->{_engine_params} = [
    init_file   => $init_file,
    test_file   => $test_file,
    page_size   => int($page_size),
    num_pages   => int($num_pages),
    expire_time => $expire_time,
    share_file  => $share_file,
    (defined $permissions ? (permissions => $permissions) : ()),
    start_slots => $start_slots,
    catch_deadlocks => $catch_deadlocks,
    enable_stats    => $enable_stats,
  ];
  $Self->_open_handle;
  # Every object, so that a new thread can give each its own handle (CLONE).
  Scalar::Util::weaken($AllCaches{"$Self"} = $Self);

  if ($empty_on_exit) {
    Scalar::Util::weaken($LiveCaches{"$Self"} = $Self);
  }

  return $Self;
}

# Makes this interpreter's engine handle for the object: opens the share file
# with the object's parameters and fixes the fast-path policy.  Called by new
# and, in a new thread, by CLONE (then without init_file or test_file: the
# file is live and shared).
sub _open_handle {
  my ($Self, $Reopen) = @_;
  my %Params = @{ $Self->{_engine_params} };
  @Params{qw(init_file test_file)} = (0, 0) if $Reopen;
  my @Order = grep { exists $Params{$_} } qw(init_file test_file page_size num_pages
    expire_time share_file permissions start_slots catch_deadlocks enable_stats);

  my $Cache = fc_new();
  fc_set_param($Cache, $_, $Params{$_}) for @Order;
  fc_init($Cache);

  # The fast paths (one XS call per get/set/...; see xs/FastMmap.xs) apply
  # only where no callback could be needed; everything else runs the
  # _*_general methods below.  Callbacks, serializers and compressors are
  # therefore fixed when the object is built.
  my $write_back = $Self->{write_back};
  my $Policy = 0x20;                                          # exists, multi_get
  $Policy |= 0x01 unless $Self->{read_cb};                    # get
  $Policy |= 0x02 unless $Self->{write_cb};                   # set
  $Policy |= 0x04 unless $Self->{delete_cb};                  # remove
  $Policy |= 0x08 unless $Self->{read_cb} || $Self->{write_cb};   # get_and_set
  $Policy |= 0x10 unless $write_back && $Self->{write_cb};    # multi_set
  # get with a read_cb: hits in XS, misses here (not with enable_stats,
  # where the XS's locked look-up would count a read the Perl one repeats).
  $Policy |= 0x40 if $Self->{read_cb} && !$Self->{enable_stats};
  # set in a write-back cache: write_cb only for what the store evicts (and
  # a value that does not fit), both called from the XS into the Perl layer.
  $Policy |= 0x80 if $write_back && $Self->{write_cb};
  # For Storable the fast paths call its XS entry points directly (freeze
  # and thaw are Perl wrappers around them that cost a third of the time).
  my ($FastSer, $FastDeser) = @$Self{qw(serialize deserialize)};
  my $Direct = $FastSer && $FastSer == (Storable->can('freeze') || 0)
    && defined &Storable::mstore && defined &Storable::mretrieve;
  ($FastSer, $FastDeser) = (\&Storable::mstore, \&Storable::mretrieve) if $Direct;
  fc_set_policy($Cache, $Policy, $write_back ? 1 : 0, $FastSer, $FastDeser,
    ($Self->{compress} ? ($Self->{compress}, $Self->{uncompress}) : (undef, undef)));
  fc_set_storable_flags($Cache) if $Direct;
  $Self->{Cache} = $Cache;
  fc_attach($Self, $Cache);
  return;
}

# The current ithread's id (0 without threads).
sub _thread_id {
  return $INC{'threads.pm'} && defined &threads::tid ? threads->tid : 0;
}

#----------------------------------------------------------------------------
# Turning arguments into bytes
#----------------------------------------------------------------------------

# A key as the plain string the engine hashes and stores, computed once and
# before any page lock: copying runs FETCH and get-magic, "" runs
# overloading.  An undefined key is the empty string, with Perl's usual
# warning (in the caller's warnings scope), also before the lock.
sub _key_bytes {
  my $Key = $_[0];
  return "$Key" if ref $Key;
  return $Key if defined $Key;
  warnings::warnif('uninitialized', 'Use of uninitialized value as a Cache::FastMmap key');
  return '';
}

# serialize(\$value) then compress: the bytes to store, or undef.  A
# reference left over (a raw cache given an object) is stringified here, so
# no overloading runs later under the lock.
sub _freeze {
  my ($Self, $ValueRef) = @_;
  my $Val = $Self->{serialize} ? $Self->{serialize}->($ValueRef) : $$ValueRef;
  $Val = $Self->{compress}->($Val) if $Self->{compress};
  return ref $Val ? "$Val" : $Val;
}

#----------------------------------------------------------------------------
# Reading
#
# Every method below follows the same shape: arguments into bytes first,
# then `my $Lock = fc_lock_scoped(...)`, the engine calls, fc_unlock, and
# only then deserializers and the callbacks that upstream runs unlocked.
# The lexical $Lock releases the page on any way out of its scope (a die
# from a callback, a serializer or a signal handler), so no error path needs
# its own unlock.  Engine warnings wait for fc_unlock.
#----------------------------------------------------------------------------

# Reads $Key from the page locked under $$LockRef, calling read_cb on a miss
# (and storing what it returns, as upstream: serialized under the lock).
# Returns (stored bytes or undef, found, expire_on, modseq).
sub _read_locked {
  my ($Self, $Page, $Slot, $Key, $KeyArg, $LockRef) = @_;
  my $Cache = $Self->{Cache};
  my ($Val, undef, $Found, $ExpireOn, $ModSeq) = fc_read($Cache, $Slot, $Key);
  return ($Val, $Found, $ExpireOn, $ModSeq) if $Found;

  my $read_cb = $Self->{read_cb} or return (undef, 0, 0, undef);
  if ($Self->{allow_recursive}) {
    # Let the callback use the cache: the lock is dropped around it.
    fc_unlock($Cache);
    $Val = $read_cb->($Self->{context}, $KeyArg);
    $$LockRef = fc_lock_scoped($Cache, $Page);
  }
  else {
    $Val = $read_cb->($Self->{context}, $KeyArg);
  }
  return (undef, 0, 0, undef) unless defined $Val || $Self->{cache_not_found};

  $Val = $Self->_freeze(\$Val);
  $Self->_expunge_page(2, 1, length($Key) + (defined $Val ? length($Val) : 0));
  # Stored clean with the default expiry.  A tombstone refuses it; the value
  # is returned to the caller all the same.
  fc_write($Cache, $Slot, $Key, $Val, -1, 0);
  return ($Val, 0, 0, undef);
}

sub _get_general {
  my ($Self, $KeyArg, $Opts) = @_;
  $Opts = undef unless ref $Opts && Scalar::Util::reftype($Opts) eq 'HASH';
  my $Key = _key_bytes($KeyArg);
  my $Cache = $Self->{Cache};

  my ($Page, $Slot) = fc_hash($Cache, $Key);
  my ($Val, $ModSeq);
  {
    my $Lock = fc_lock_scoped($Cache, $Page);
    ($Val, undef, undef, $ModSeq) = $Self->_read_locked($Page, $Slot, $Key, $KeyArg, \$Lock);
    fc_unlock($Cache);
  }

  my $ModSeqRef = $Opts ? $Opts->{modseq} : undef;
  if (defined $ModSeqRef) {
    die "get modseq option must be a scalar ref" if ref($ModSeqRef) ne 'SCALAR';
    $$ModSeqRef = $ModSeq;
  }
  return $Self->_thaw($Val);
}

sub _exists_general {
  my ($Self, $KeyArg) = @_;
  my $Key = _key_bytes($KeyArg);
  my $Cache = $Self->{Cache};

  my ($Page, $Slot) = fc_hash($Cache, $Key);
  my $Lock = fc_lock_scoped($Cache, $Page);
  my (undef, undef, $Found) = fc_read($Cache, $Slot, $Key);
  fc_unlock($Cache);
  return $Found ? 1 : 0;
}

#----------------------------------------------------------------------------
# Writing
#----------------------------------------------------------------------------

# Writes already-frozen bytes into the locked page (making room first; the
# modseq prefix is deliberately not counted).  Returns fc_write's 1/0/-1.
sub _write_locked {
  my ($Self, $Slot, $Key, $Val, $ExpireOn, $ModSeq) = @_;
  $Self->_expunge_page(2, 1, length($Key) + (defined $Val ? length($Val) : 0));
  my $Flags = $Self->{write_back} ? FC_ISDIRTY : 0;
  return defined $ModSeq
    ? fc_write($Self->{Cache}, $Slot, $Key, $Val, $ExpireOn, $Flags, $ModSeq)
    : fc_write($Self->{Cache}, $Slot, $Key, $Val, $ExpireOn, $Flags);
}

# write_cb after a store, outside the lock: always in write-through mode,
# and as a fallback when a write-back store did not fit.  A refused
# conditional store calls nothing.  Its errors are ignored, as upstream.
sub _after_store {
  my ($Self, $KeyArg, $ValueRef, $ExpireOn, $Stored) = @_;
  if ($Stored != -1 && (!$Self->{write_back} || $Stored != 1)
      && (my $write_cb = $Self->{write_cb})) {
    local $@;
    eval { $write_cb->($Self->{context}, $KeyArg, $$ValueRef, $ExpireOn); 1 };
  }
  return;
}

# (expire_on, modseq) of set-style options.
sub _store_opts {
  my ($Opts, $Who) = @_;
  my $ModSeq;
  $ModSeq = _modseq_arg($Opts->{modseq}, $Who) if $Opts && defined $Opts->{modseq};
  return (_expire_on_from($Opts), $ModSeq);
}

sub _set_general {
  my ($Self, $KeyArg) = ($_[0], $_[1]);
  my $ValueRef = \$_[2];
  my $Opts = defined $_[3] ? (ref $_[3] ? $_[3] : { expire_time => $_[3] }) : undef;

  my ($ExpireOn, $ModSeq) = _store_opts($Opts, 'set');
  my $Key = _key_bytes($KeyArg);
  # Serialized before locking: a serializer that dies holds no lock.
  my $Val = $Self->_freeze($ValueRef);

  my $Cache = $Self->{Cache};
  my ($Page, $Slot) = fc_hash($Cache, $Key);
  my $Stored;
  {
    my $Lock = fc_lock_scoped($Cache, $Page);
    $Stored = $Self->_write_locked($Slot, $Key, $Val, $ExpireOn, $ModSeq);
    fc_unlock($Cache);
  }
  $Self->_after_store($KeyArg, $ValueRef, $ExpireOn, $Stored);
  return $Stored == 1 ? 1 : 0;
}

# For get_and_set's XS fast path: the callback returned options, so the
# store into the page the XS holds locked is done here.  Returns 1/0/-1.
sub _store_locked_with_opts {
  my ($Self, $Key, $Value, $Opts) = @_;
  my ($ExpireOn, $ModSeq) = _store_opts($Opts, 'set');
  my (undef, $Slot) = fc_hash($Self->{Cache}, $Key);
  return $Self->_write_locked($Slot, $Key, $Self->_freeze(\$Value), $ExpireOn, $ModSeq);
}

sub _get_and_set_general {
  my ($Self, $KeyArg, $Sub) = @_;
  my $Key = _key_bytes($KeyArg);
  my $Cache = $Self->{Cache};

  my ($Page, $Slot) = fc_hash($Cache, $Key);
  my ($Value, $DidStore, @New) = (undef, 0);
  my ($ExpireOn, $Stored);
  {
    my $Lock = fc_lock_scoped($Cache, $Page);
    my ($Raw, $Found, $OldExpireOn, $ModSeq)
      = $Self->_read_locked($Page, $Slot, $Key, $KeyArg, \$Lock);
    # Upstream runs the deserializer and the callback under the lock.
    $Value = $Self->_thaw($Raw);
    my %GetOpts = (($Found ? (expire_on => $OldExpireOn) : ()),
                   (defined $ModSeq ? (modseq => $ModSeq) : ()));
    # $_[0] is a copy: the value is stored under the key as it was passed.
    @New = $Sub->(my $KeyCopy = $KeyArg, $Value, \%GetOpts);
    if (@New) {
      my $SetOpts;
      ($Value, $SetOpts) = @New;
      die "get_and_set callback options must be a hash reference"
        if defined $SetOpts && ref($SetOpts) ne 'HASH';
      my $ModSeqArg;
      ($ExpireOn, $ModSeqArg) = _store_opts($SetOpts, 'set');
      $Stored = $Self->_write_locked($Slot, $Key, $Self->_freeze(\$Value), $ExpireOn, $ModSeqArg);
      $DidStore = $Stored == 1 ? 1 : 0;
    }
    fc_unlock($Cache);
  }
  $Self->_after_store($KeyArg, \$Value, $ExpireOn, $Stored) if @New;

  return wantarray ? ($Value, $DidStore) : $Value;
}

# Removes $Key from the locked page (a tombstone with a modseq option).
# Returns (deleted, flags of the deleted entry).
sub _remove_locked {
  my ($Self, $Slot, $Key, $ModSeq, $Opts) = @_;
  my $Cache = $Self->{Cache};
  return fc_delete($Cache, $Slot, $Key) unless defined $ModSeq;

  my $ExpireOn;
  if (defined $Opts->{expire_on}) {
    $ExpireOn = $Opts->{expire_on};
  }
  elsif (defined $Opts->{expire_time}) {
    $ExpireOn = parse_expire_time($Opts->{expire_time}, _time());
  }
  elsif ($Self->{tombstone_expire_time}) {
    $ExpireOn = _time() + $Self->{tombstone_expire_time};
  }
  else {
    $ExpireOn = -1;
  }
  $Self->_expunge_page(2, 1, length($Key) + 8);
  return (fc_tombstone($Cache, $Slot, $Key, $ExpireOn, $ModSeq), 0);
}

# delete_cb after a remove, outside the lock.  A dirty entry that was never
# written back is dropped silently: the backing store never knew about it.
sub _after_remove {
  my ($Self, $KeyArg, $DidDel, $Flags) = @_;
  if ((!$DidDel || !(($Flags || 0) & FC_ISDIRTY))
      && (my $delete_cb = $Self->{delete_cb})) {
    local $@;
    eval { $delete_cb->($Self->{context}, $KeyArg); 1 };
  }
  return;
}

sub _remove_general {
  my ($Self, $KeyArg, $Opts) = @_;
  $Opts = undef unless ref $Opts && Scalar::Util::reftype($Opts) eq 'HASH';

  my $ModSeq;
  $ModSeq = _modseq_arg($Opts->{modseq}, 'remove')
    if $Opts && defined $Opts->{modseq};
  my $Key = _key_bytes($KeyArg);

  my $Cache = $Self->{Cache};
  my ($Page, $Slot) = fc_hash($Cache, $Key);
  my ($DidDel, $Flags);
  {
    my $Lock = fc_lock_scoped($Cache, $Page);
    ($DidDel, $Flags) = $Self->_remove_locked($Slot, $Key, $ModSeq, $Opts);
    fc_unlock($Cache);
  }
  $Self->_after_remove($KeyArg, $DidDel, $Flags);
  return $DidDel ? 1 : 0;
}

sub get_and_remove {
  my ($Self, $KeyArg) = @_;
  my $Key = _key_bytes($KeyArg);
  my $Cache = $Self->{Cache};

  my ($Page, $Slot) = fc_hash($Cache, $Key);
  my ($Raw, $DidDel, $Flags);
  {
    my $Lock = fc_lock_scoped($Cache, $Page);
    ($Raw) = $Self->_read_locked($Page, $Slot, $Key, $KeyArg, \$Lock);
    ($DidDel, $Flags) = $Self->_remove_locked($Slot, $Key);
    fc_unlock($Cache);
  }
  $Self->_after_remove($KeyArg, $DidDel, $Flags);
  my $Value = $Self->_thaw($Raw);
  return wantarray ? ($Value, $DidDel ? 1 : 0) : $Value;
}

sub expire {
  my ($Self, $KeyArg) = @_;
  my $Key = _key_bytes($KeyArg);
  my $Cache = $Self->{Cache};

  my ($Page, $Slot) = fc_hash($Cache, $Key);
  my ($Val, $Flags, $Found, $ExpireOn);
  {
    my $Lock = fc_lock_scoped($Cache, $Page);
    ($Val, $Flags, $Found, $ExpireOn) = fc_read($Cache, $Slot, $Key);
    fc_delete($Cache, $Slot, $Key) if $Found;
    fc_unlock($Cache);
  }

  if ($Found && ($Flags & FC_ISDIRTY) && (my $write_cb = $Self->{write_cb})) {
    $Val = $Self->_thaw($Val);
    local $@;
    eval { $write_cb->($Self->{context}, $KeyArg, $Val, $ExpireOn); 1 };
  }

  return $Found ? 1 : 0;
}

#----------------------------------------------------------------------------
# Whole-cache operations
#----------------------------------------------------------------------------

sub clear {
  my $Self = shift;
  return $Self->_expunge_all(1, 0);
}

sub purge {
  my $Self = shift;
  return $Self->_expunge_all(0, 0);
}

sub empty {
  my ($Self, $OnlyExpired) = @_;
  return $Self->_expunge_all($OnlyExpired ? 0 : 1, 1);
}

sub get_keys {
  my ($Self, $Mode) = ($_[0], $_[1] || 0);
  my $Cache = $Self->{Cache};

  if ($Mode <= 1 || ($Mode == 2 && !$Self->{serialize} && !$Self->{compress})) {
    return fc_get_keys($Cache, $Mode);
  }

  my @Details = fc_get_keys($Cache, 2);
  for my $Item (@Details) {
    $Item->{value} = $Self->_thaw($Item->{value}) if defined $Item->{value};
  }
  return @Details;
}

sub get_statistics {
  my ($Self, $Clear) = @_;
  my $Cache = $Self->{Cache};
  my ($NReads, $NReadHits) = (0, 0);

  for my $Page (0 .. int($Self->{num_pages}) - 1) {
    my $Lock = fc_lock_scoped($Cache, $Page);
    my ($Reads, $Hits) = fc_get_page_details($Cache);
    $NReads    += $Reads;
    $NReadHits += $Hits;
    fc_reset_page_details($Cache) if $Clear;
    fc_unlock($Cache);
  }

  return ($NReads, $NReadHits);
}

sub repaired_pages {
  my $Self = shift;
  return fc_repaired_pages($Self->{Cache});
}

#----------------------------------------------------------------------------
# Operability: cumulative statistics kept in the file (stats)
#----------------------------------------------------------------------------

# One hashref from the engine: a few words of every page header read without
# locking, and the counters every process adds to in the file header.  Safe
# anywhere, even inside get_and_set's callback (no page lock is taken there).
sub stats {
  my $Self = shift;
  Carp::croak('stats takes no arguments') if @_;
  my $Cache = $Self->{Cache};
  Carp::croak('Cache::FastMmap: the cache is closed')
    unless ref($Cache) && fc_is_open($Cache);
  return fc_stats($Cache);
}

#----------------------------------------------------------------------------
# Multi-key operations within one page
#----------------------------------------------------------------------------

sub _multi_get_general {
  my ($Self, $PageKeyArg, $Keys) = @_;
  my $Cache = $Self->{Cache};
  my $PageKey = _key_bytes($PageKeyArg);
  my @Keys = map { _key_bytes($_) } @$Keys;

  my ($Page) = fc_hash($Cache, $PageKey);
  my %Raw;
  {
    my $Lock = fc_lock_scoped($Cache, $Page);
    for my $Key (@Keys) {
      my $FullKey = "$PageKey-$Key";
      my (undef, $Slot) = fc_hash($Cache, $FullKey);
      my ($Val, undef, $Hit) = fc_read($Cache, $Slot, $FullKey);
      $Raw{$Key} = $Val if $Hit;
    }
    fc_unlock($Cache);
  }

  my %Found;
  $Found{$_} = $Self->_thaw($Raw{$_}) for keys %Raw;
  return \%Found;
}

sub _multi_set_general {
  my ($Self, $PageKeyArg, $KVs) = @_;
  my $Opts = defined $_[3] ? (ref $_[3] ? $_[3] : { expire_time => $_[3] }) : undef;
  my $ExpireOn = _expire_on_from($Opts);
  my $Cache = $Self->{Cache};
  my $PageKey = _key_bytes($PageKeyArg);

  # Every value serialized before locking: a die writes nothing.
  my @Items = map { ["$PageKey-$_", $Self->_freeze(\$KVs->{$_})] } keys %$KVs;

  my ($Page) = fc_hash($Cache, $PageKey);
  my $Lock = fc_lock_scoped($Cache, $Page);
  for my $Item (@Items) {
    my ($FullKey, $Val) = @$Item;
    my (undef, $Slot) = fc_hash($Cache, $FullKey);
    $Self->_expunge_page(2, 1, length($FullKey) + (defined $Val ? length($Val) : 0));
    # multi_set values are always clean; a failed store is ignored.
    fc_write($Cache, $Slot, $FullKey, $Val, $ExpireOn, 0);
  }
  fc_unlock($Cache);
  return 1;
}

#----------------------------------------------------------------------------
# Expunging and write-back
#----------------------------------------------------------------------------

# Run an expunge on every page, one page locked at a time.
sub _expunge_all {
  my ($Self, $Mode, $WB) = @_;
  my $Cache = $Self->{Cache};

  for my $Page (0 .. int($Self->{num_pages}) - 1) {
    my $Lock = fc_lock_scoped($Cache, $Page);
    $Self->_expunge_page($Mode, $WB, -1);
    fc_unlock($Cache);
  }
  return '';
}

# Expunge the currently locked page.  Mode 0: expired entries, 1: everything,
# 2: make room for $Len bytes (LRU).  With $WB in a write-back cache, dirty
# entries leaving the page are handed to write_cb while the page is locked
# (as upstream; the caller's scoped lock releases it if anything dies).
sub _expunge_page {
  my ($Self, $Mode, $WB, $Len) = @_;
  my $write_cb = ($WB && $Self->{write_back}) ? $Self->{write_cb} : undef;

  return fc_expunge($Self->{Cache}, $Mode, 0, $Len) unless $write_cb;

  # wb 2 of the XS: the engine keeps only the dirty entries, and hands them
  # to _write_back_dirty below a few at a time.
  fc_expunge($Self->{Cache}, $Mode, 2, $Len, $Self);
  return;
}

# Hands dirty entries an expunge removed, a flat (key, value, expire_on) list
# of a few of them (the XS calls it once per chunk of the batch, from
# fc_expunge and from the XS set of a write-back cache), to write_cb.  The
# page is still locked, as upstream; a die from write_cb is ignored, as
# upstream.
sub _write_back_dirty {
  my ($Self, $Dirty) = @_;
  my $write_cb = $Self->{write_cb} or return;
  for (my $i = 0; $i < @$Dirty; $i += 3) {
    my ($Key, $Raw, $ExpireOn) = @$Dirty[$i .. $i + 2];
    my $Val = $Self->_thaw($Raw);
    local $@;
    eval { $write_cb->($Self->{context}, $Key, $Val, $ExpireOn); 1 };
  }
  return;
}

#----------------------------------------------------------------------------
# Time and parsing
#----------------------------------------------------------------------------

sub _time {
  return $time_override ? $time_override : time;
}

sub _set_time_override {
  # Normally called as a function; tolerate a method call too.
  shift if @_ && (Scalar::Util::blessed($_[0])
    || (defined $_[0] && !ref $_[0] && $_[0] =~ /[A-Za-z_]/
        && UNIVERSAL::isa($_[0], __PACKAGE__)));
  my $Time = shift;
  $time_override = $Time;
  fc_set_time_override($Time || 0);
  return;
}

sub parse_expire_time {
  my $Spec = shift || '';
  return 0 if $Spec eq 'never';
  return @_ ? $_[0] : 1 if $Spec eq 'now';
  my $Offset = $Spec =~ /^(\d+)\s*([mhdws]?)/i ? $1 * $UnitSeconds{lc $2} : 0;
  return $Offset + (defined $_[0] ? $_[0] : 0);
}

sub RoundPow2 {
  return int(2 ** int(log($_[0]) / log(2)) + 0.1);
}

#----------------------------------------------------------------------------
# Lifecycle
#----------------------------------------------------------------------------

sub cleanup {
  my $Self = shift;
  return if $Self->{cleaned};
  $Self->{cleaned} = 1;

  # Only the process, and the thread, that created the object empties or
  # deletes the file: never a forked child, never a thread's copy.
  my $Creator = defined $Self->{pid} && $Self->{pid} == $$
    && ($Self->{tid} || 0) == _thread_id();
  my $Cache = $Self->{Cache};
  # The handle may already be gone (global destruction order is undefined).
  my $Alive = ref($Cache) && fc_is_open($Cache) ? 1 : 0;

  my ($Ok, $Err) = (1);
  if ($Self->{empty_on_exit} && $Creator && $Alive) {
    local $@;
    $Ok = eval { $Self->empty; 1 };
    $Err = $@ unless $Ok;
  }

  fc_close($Cache) if $Alive;
  delete $Self->{Cache};

  if ($Self->{unlink_on_exit} && $Creator) {
    unlink($Self->{share_file});
  }

  die $Err unless $Ok;
  return;
}

sub DESTROY {
  my $Self = shift;
  $Self->cleanup;
  delete $LiveCaches{"$Self"} if $Self->{empty_on_exit};
  delete $AllCaches{"$Self"};
}

sub END {
  local $?;
  for my $Cache (grep { defined } values %LiveCaches) {
    local $@;
    eval { $Cache->cleanup; 1 } or warn $@;
  }
  %LiveCaches = ();
}

# A new ithread (or a mod_perl interpreter clone) starts with copies of the
# objects, and the XS gives each copy's handle its own engine handle on the
# same open file (see fcx_handle_mg_dup).  Should that have failed, the file
# is opened again by name.  Keys of the registries are addresses, which
# differ in the copy, so they are rebuilt.
sub CLONE {
  my @Objects = grep { defined } values %AllCaches;
  %AllCaches = ();
  for my $Self (@Objects) {
    Scalar::Util::weaken($AllCaches{"$Self"} = $Self);
    next if $Self->{cleaned};
    $Self->_open_handle(1) unless ref $Self->{Cache} && fc_is_open($Self->{Cache});
  }
  my @Live = grep { defined } values %LiveCaches;
  %LiveCaches = ();
  Scalar::Util::weaken($LiveCaches{"$_"} = $_) for @Live;
  return;
}

1;

__END__

=head1 NAME

Cache::FastMmap - a fast cache shared between processes through an mmap'ed file

=head1 SYNOPSIS

  use Cache::FastMmap;

  # One cache, created by the parent before it forks its workers
  my $cache = Cache::FastMmap->new(
    share_file  => '/var/cache/myapp/cache.bin',
    cache_size  => '64m',
    expire_time => '10m',
  );

  # Store and fetch any Perl data structure (frozen with Storable)
  $cache->set('user:42', { name => 'Ann', roles => [qw(admin)] });
  my $user = $cache->get('user:42');

  # Per-item expiry
  $cache->set('session:abc', $session, '30m');
  $cache->set('token:xyz', $token, { expire_on => time + 3600 });

  # Atomic read-modify-write
  my $hits = $cache->get_and_set('hits', sub { ($_[1] || 0) + 1 });

  # Removal
  $cache->remove('user:42');
  my $old = $cache->get_and_remove('session:abc');

  # Read-through / write-back cache in front of a slow store
  my $db_cache = Cache::FastMmap->new(
    share_file   => '/var/cache/myapp/db.bin',
    context      => $dbh,
    read_cb      => sub { my ($dbh, $key) = @_; load_row($dbh, $key) },
    write_cb     => sub { my ($dbh, $key, $val) = @_; save_row($dbh, $key, $val) },
    delete_cb    => sub { my ($dbh, $key) = @_; delete_row($dbh, $key) },
    write_action => 'write_back',
    empty_on_exit => 1,
  );

=head1 DESCRIPTION

Cache::FastMmap keeps a key/value cache in a file that every process using
the cache maps into its memory.  A value stored by one process can be read by
all the others, so it suits pre-forking servers (Apache with mod_perl,
Starman, Net::Server and the like) where each worker would otherwise build
and hold its own private cache.

The file is divided into pages.  A key is hashed to choose its page, and each
page has its own lock, so processes working on different pages never wait for
each other.  Each page is managed on its own: when a page fills up, expired
entries are dropped first and then the least recently used ones, until
enough room is free.  Because of that the cache as a whole is only
approximately LRU, but it never needs a global lock.

Values are by default frozen with L<Storable>, so any data structure can be
stored; a raw mode stores plain strings as they are, and other serializers
and compressors can be selected.  Entries may expire after a cache-wide or
per-entry time.  Optional callbacks turn the cache into a read-through,
write-through or write-back layer in front of a slower store.

This distribution is a drop-in replacement for the C-based Cache::FastMmap
1.63: the constructor options, methods, return values, error messages and
callback rules are the same, so existing code keeps working.  The engine
underneath is new and written in Rust; the differences that can be seen from
Perl are listed in L</DIFFERENCES FROM THE C IMPLEMENTATION>.

=head2 Recommended use

Create the cache in the parent process, then fork.  Every child inherits the
open, mapped file and can use the object straight away; locks are never
inherited, so parent and children exclude each other correctly.  Processes
that are not related by fork can also share a cache: each one calls C<new>
with the same C<share_file> and the same geometry options, and none of them
passes C<init_file>.

=head1 IMPLEMENTATION

  print $Cache::FastMmap::IMPLEMENTATION;   # "rust"

C<$Cache::FastMmap::IMPLEMENTATION> is C<'rust'> in this distribution.  It
does not exist in the C-based releases, so code that needs to know which
engine it runs on can test C<< ($Cache::FastMmap::IMPLEMENTATION || 'c') >>.
C<$Cache::FastMmap::VERSION> is C<2.00>.

  print Cache::FastMmap::_lock_backend();   # "robust-mutex" or "fcntl"

C<Cache::FastMmap::_lock_backend()> names the page-lock backend the engine
was built with: C<'robust-mutex'> on Linux, C<'fcntl'> on other systems and
on Linux built with C<FASTMMAP_PORTABLE=1 perl Makefile.PL>.  What each
guarantees is in the README's "Platforms" section.  Processes of the two
kinds cannot share a file: one that finds a file in use by the other kind
croaks.

=head1 CONSTRUCTOR

=head2 new(%Options) or new(\%Options)

Creates the cache object, creating or attaching to the share file.  Options
may be passed as a list of pairs or as one hash reference.  Unknown options
are ignored.  All sizes are in bytes and all times in seconds unless stated
otherwise.

=head3 The share file

=over 4

=item share_file

Path of the file that holds the cache.  Every process that should see the
same data must use the same path.  When the option is missing or false, a
new unique name in the temporary directory (C<< File::Spec->tmpdir >>) is
made up from the word C<sharefile>, the process id, the time and a random
number; such a cache is then private to this process and its children.
Passing a reference dies with C<share_file argument was a reference>.

The file is created if it does not exist.  If it exists but was made with a
different geometry, or by another implementation, it is replaced by a new
empty file (processes still attached to the old file keep using it).

=item init_file

If true, an existing share file is thrown away and a new, empty one is
created.  Do not use it when independent processes attach to the same file
at different times, or a late starter will wipe everyone's data.  Default 0.

=item test_file

If true, every page is checked when the file is opened and any page that is
not consistent is repaired.  The engine checks each page it locks anyway, so
this mostly brings repairs forward to start-up.  Default 0.

=item unlink_on_exit

If true, the share file is deleted when the object is cleaned up (see
L<cleanup()|/"cleanup()">), but only in the process that created the object.  When the
option is not given at all, the default is true if the file did not exist
before C<new> ran (we are creating it) and false if it did.  Passing
C<undef> explicitly counts as false.

=item permissions

The mode with which a new share file is created, as a number (C<0600>, not
the string C<'0600'>, which would be read as decimal 600).  The process
umask still applies.  Default 0640.

=back

=head3 Size and layout

The cache is C<num_pages> pages of C<page_size> bytes each.  You can give the
pages directly, or give a total C<cache_size> and let the constructor work
out the pages.  C<cache_size> and C<page_size> accept a C<k> (KiB) or C<m>
(MiB) suffix in either case.  After construction C<< $cache->{num_pages} >>,
C<< $cache->{page_size} >> and C<< $cache->{cache_size} >> hold the geometry
actually used.

=over 4

=item cache_size

Approximate total size.  When it is given together with C<num_pages>, the
page size is C<cache_size / num_pages> rounded down to a power of two, but
at least 4096.  When it is given alone, the page size is C<page_size> (not
rounded, at least 4096) and the number of pages is picked from the sequence
1, 4, 10, 21, 44, 89, 179, 359, 719, 1439, 2879, ... (each step is twice the
previous one plus one): starting at 89, it grows while the pages would still
fit in C<cache_size>, or shrinks while they would not, so the final size is
close to C<cache_size> and usually a little above it.

=item num_pages

Number of pages when C<cache_size> is not given.  Default 89.  A prime number
spreads keys more evenly.

=item page_size

Size of each page when C<cache_size> is not given: it is rounded B<down> to a
power of two (so 5000 becomes 4096 and 65535 becomes 32768), and there is no
minimum in this mode.  Default 64k.

=item start_slots

Number of hash slots a fresh page starts with.  Pages grow their slot table
as they fill up, so this rarely matters.  Default 44: a slot takes 8 bytes
here and 4 in the C implementation, so 44 take the bytes of its default 89,
and a page holds as much as there.

=back

Some examples of the geometry that results:

  options                                num_pages  page_size  cache_size
  (none)                                        89      65536     5832704
  cache_size => '1m'                            21      65536     1376256
  cache_size => '10m'                          179      65536    11730944
  cache_size => '1m', num_pages => 7             7     131072      917504
  cache_size => '1m', page_size => '8k'        179       8192     1466368
  page_size => '8k'                             89       8192      729088
  page_size => 5000                             89       4096      364544
  page_size => 1000                             89        512       45568

A value that is not a number, a negative value, a value that becomes zero,
or a page too small to hold its 32-byte header, an 8-byte slot for each of
the C<start_slots> and one small item makes C<new> croak with a message
that names the offending option.  The largest page is 1 GiB.

Each item needs a 24-byte header plus its key and value, and its share of
the slot table: 8 bytes a slot, with between 30% and 70% of the slots in
use after the table has grown to fit.  Because a
page is emptied down to 60% before a new item is added, an item larger than
roughly 40% of a page can only be stored in a page that is mostly free; items
larger than a page can never be stored and C<set> returns false for them.
Choose C<page_size> with your largest values in mind.

=head3 Expiry

=over 4

=item expire_time

Default lifetime of entries, in the format described in L</EXPIRY TIMES>
(for example C<'10m'> or C<3600>).  The default, 0, means entries never
expire on their own.  Expired entries are invisible to readers and are
removed when their page next needs room (or by L<purge()|/"purge()">).

=item tombstone_expire_time

Default lifetime of the tombstones written by C<remove> with a C<modseq>
option (see L</CONDITIONAL STORES AND TOMBSTONES>).  0, the default, means
tombstones use C<expire_time>.

=back

=head3 Value format

=over 4

=item serializer

How values are turned into bytes: C<'storable'> (the default: L<Storable>
C<freeze>/C<thaw>), C<'sereal'> (L<Sereal::Encoder>/L<Sereal::Decoder>),
C<'json'> (L<JSON>, configured with C<utf8> and C<allow_nonref>), C<''> or
C<0> for none (raw mode, only plain strings can be stored), or an array
reference C<[ \&freeze, \&thaw ]> of your own.  A custom freeze function
receives a B<reference> to the value and returns a string; the thaw function
receives that string and must return a B<reference> to the value.  Unknown
names die with C<< Unrecognized value >name< for `serializer` parameter >>,
and a module that cannot be loaded dies with
C<Could not load serialization package: MODULE : ERROR>.

In raw mode the UTF-8 flag of a value is remembered, and C<undef> is kept
distinct from the empty string.  Numbers and references are stored in their
string form.

=item compressor

Compress the (serialized) value before storing it: C<'zlib'>
(L<Compress::Zlib> C<memGzip>/C<memGunzip>), C<'lz4'> (L<Compress::LZ4>),
C<'snappy'> (L<Compress::Snappy>), or C<[ \&compress, \&uncompress ]>.
Default: none.  Unknown names die with
C<< Unrecognized value >name< for `compressor` parameter >>, and a module
that cannot be loaded dies with
C<Could not load compression package: MODULE : ERROR>.

=item raw_values

Deprecated; use C<< serializer => '' >>.  Only looked at when C<serializer>
is not given: a true value means no serializer.

=item compress

Deprecated; use C<compressor>.  Only looked at when C<compressor> is not
given: B<any> true value selects zlib.

=back

=head3 Callbacks and write-back

=over 4

=item context

Any value; it is passed as the first argument to every callback, typically a
database handle or an object.

=item read_cb

C<< $read_cb->($context, $key) >> is called when C<get> does not find a key.
If it returns a defined value, that value is stored in the cache (with the
default expiry) and returned by C<get>.  Errors it throws propagate to the
caller of C<get>.

=item cache_not_found

If true, an undefined result from C<read_cb> is cached too, so the slow
store is not asked again for the same missing key until the entry expires.

=item write_cb

C<< $write_cb->($context, $key, $value, $expire_on) >> is called to save a
value to the slow store; see L</CALLBACKS AND WRITE-BACK> for when.
C<$expire_on> is the absolute expiry time, or -1 when C<set> was called
without an expiry.  Errors it throws are ignored.

=item delete_cb

C<< $delete_cb->($context, $key) >> is called by C<remove> and
C<get_and_remove>.  Errors it throws are ignored.

=item write_action

C<'write_through'> (the default): C<set> calls C<write_cb> immediately.
C<'write_back'>: C<set> only marks the entry dirty, and C<write_cb> is called
later, when the entry leaves the cache.

=item allow_recursive

If true, C<get> releases its page lock while C<read_cb> runs, so the
callback may itself use the cache.  Without it, any use of the same cache
object from inside C<read_cb> croaks with C<... already locked ...>.

=item empty_on_exit

If true, the cache is emptied (writing back dirty entries through
C<write_cb>) when the object is destroyed or when the program ends, but only
in the process that created the object.  Needs L<Scalar::Util>.

=back

=head3 Other options

=over 4

=item enable_stats

If true, each page counts reads and hits; see L<get_statistics()|/"get_statistics([$clear])">.

=item catch_deadlocks

If true, waiting for a page lock gives up after 10 seconds and the method
croaks with a message saying so, instead of waiting forever.  See
L</DIFFERENCES FROM THE C IMPLEMENTATION>.

=back

=head1 METHODS

Keys are byte strings: a key is identified by the bytes Perl holds for it
internally, so a character string and its UTF-8 encoded byte string are the
same key, while a Latin-1 string and its upgraded copy are different keys.
A reference used as a key is stringified.

All methods that lock release the lock before they return or rethrow an
error, and none of them changes C<$@> when it succeeds.  Calling any method
after L<cleanup()|/"cleanup()"> croaks C<Object not reference>.

=head2 get($key, [\%options])

Returns the value stored under C<$key>, or C<undef> if there is none, it has
expired, or a tombstone holds the key.  A successful read marks the entry as
recently used.  On a miss with a C<read_cb>, the callback is asked for the
value, which is then stored and returned (see L</read_cb>).  The value is
always a copy: changing it does not change the cache.

Options:

=over 4

=item modseq => \$ms

C<$ms> receives the modification sequence number stored with the entry, or
C<undef> if it has none or the key was not found.  Any other kind of
reference dies with C<get modseq option must be a scalar ref>.

=back

=head2 set($key, $value, [\%options | $expire])

Stores C<$value> under C<$key>, replacing any previous value.  Returns 1 if
the value was stored and 0 if it was not (it did not fit in its page, or a
conditional store was refused).  When a new value does not fit, the
previous value is kept, but making room may already have evicted other
entries of that page.

If the third argument is a plain scalar it is an expiry time, as in
C<< { expire_time => $expire } >>; this is the L<Cache::Cache> calling
convention.  Options:

=over 4

=item expire_on => $epoch

Absolute expiry time in epoch seconds; 0 means never.  Takes precedence over
C<expire_time>.  C<undef> means the cache default.

=item expire_time => $spec

Expiry relative to now, in the format of L</EXPIRY TIMES>.  Note that a
value that parses to 0 seconds (C<0>, C<''>, C<'garbage'>) means "expires
now": the entry is stored but is already invisible.  Use C<'never'> for no
expiry.

=item modseq => $n

Makes this a conditional store; see L</CONDITIONAL STORES AND TOMBSTONES>.
C<$n> must be a string of decimal digits, otherwise C<set> dies with
C<set modseq option must be an unsigned integer>; values above 2**64-1 are
treated as 2**64-1.

=back

Without any expiry option the cache's C<expire_time> applies.

=head2 get_and_set($key, $code)

Atomically replaces the value of C<$key> with one computed from the current
value: the page is locked, the current value is read (calling C<read_cb> on
a miss), C<< $code->($key, $value, \%info) >> is called, and what it returns
is stored before the lock is released.  C<%info> holds C<expire_on> when the
key was found and C<modseq> when the entry has one.

The callback returns either the new value, or C<($new_value, \%set_options)>
where the options are those of C<set> (for example C<expire_time>), or an
empty list to leave the entry untouched.  Returning options that are not a
hash reference dies with
C<get_and_set callback options must be a hash reference>.  If the callback
dies, nothing is stored and the error propagates.

In scalar context the new (or unchanged) value is returned; in list context
C<($value, $did_store)>.

The callback runs with a page locked, so it must not use the same cache
object (that croaks with C<... already locked ...>) and should be quick.
Its C<$_[0]> is a copy of the key: whatever the callback does to it, or to
the caller's variable, the new value is stored under the key as it was
passed (1.57 also passed a copy, but then stored under the changed copy, in
a page that may not be the key's).

=head2 exists($key)

Returns 1 if C<$key> holds a live entry and 0 otherwise.  It does not call
C<read_cb> and does not thaw the value, but it counts as a use of the entry
for the LRU order and the statistics.  A cached "not found" (see
L</cache_not_found>) counts as existing.

=head2 remove($key, [\%options])

Deletes the entry for C<$key>, whether or not it has expired, and returns 1
if there was one, 0 otherwise.  C<delete_cb> is then called unless the
removed entry was a dirty write-back entry (such an entry is dropped without
being written back; the slow store never saw it).

With a C<modseq> option (same rules as for C<set>, error message
C<remove modseq option must be an unsigned integer>) the entry is replaced by
a tombstone instead; see L</CONDITIONAL STORES AND TOMBSTONES>.  The
tombstone's lifetime comes from the C<expire_on> or C<expire_time> options,
else C<tombstone_expire_time>, else the cache default.  This form returns 1
even when the key was absent, and 0 only when there was no room for the
tombstone.  C<delete_cb> is always called for it.

=head2 get_and_remove($key)

Atomically fetches and deletes C<$key> (calling C<read_cb> on a miss, and
C<delete_cb> as C<remove> does).  In scalar context returns the value; in
list context C<($value, $did_delete)>.  Two processes racing for the same
key never both get it.

=head2 expire($key)

Removes the entry for C<$key> if it is live, returning 1, or returns 0 if
there is no live entry.  A dirty write-back entry is handed to C<write_cb>
first.  C<delete_cb> is not called.

=head2 clear()

Removes every entry (including tombstones) from every page, without calling
any callback: dirty write-back entries are lost.

=head2 purge()

Removes expired entries from every page, without calling any callback.

=head2 empty([$only_expired])

Removes every entry, or only the expired ones when C<$only_expired> is true,
passing dirty write-back entries to C<write_cb> on the way out.  Call it
before the program exits if you use write-back without C<empty_on_exit>.

=head2 get_keys([$mode])

Lists the live entries of the cache.  Expired entries and tombstones are
left out, and listing does not count as a use of the entries.  The pages are
visited one at a time, so with concurrent writers the result is not an
atomic snapshot.  Within a page, entries are listed most recently stored
first (the C implementation lists them in hash-slot order), so the order is
the same from run to run and does not depend on the hash; callers such as
L<CHI>'s size-aware discard, which removes keys in this order, then drop the
newest entries first, as they did with the C implementation in practice.

=over 4

=item mode 0 (default)

A list of keys.

=item mode 1

A list of hash references with C<key>, C<last_access> (epoch seconds),
C<expire_on> (0 for never), C<flags> and, for entries that carry one,
C<modseq>.

=item mode 2

As mode 1 plus C<value>, thawed as C<get> would.

=back

The C<flags> field reports internal bits as the C implementation does (bit 0
is set for dirty write-back entries; other high bits can appear for UTF-8 or
undefined values).  In scalar context the result is the last element of the
list, except for mode 2 on a cache with a serializer or compressor, where it
is the number of entries.

=head2 get_statistics([$clear])

Returns C<($reads, $hits)> summed over all pages: the number of reads (by
C<get>, C<exists>, C<expire>, C<multi_get>, C<get_and_set> and
C<get_and_remove>) and how many found a live entry.  They are only counted
when the cache was created with C<enable_stats>.  With a true C<$clear> the
counters are reset after being read.

=head2 stats()

Returns a hash reference describing the whole cache, as every process using
the share file sees it:

  entries          occupied slots: live entries, plus expired entries and
                   tombstones that no expunge has removed yet
  capacity_bytes   num_pages * page_size
  used_bytes       capacity_bytes minus the free bytes of every page (page
                   headers, slot tables and the room of overwritten or
                   deleted entries not yet reclaimed count as used)
  evictions        live entries evicted (least recently used first) to make
                   room for new ones
  expirations      expired entries removed (by an expunge, purge or empty)
  repairs          pages found damaged and repaired
  reads            lookups (get, exists, get_and_set, multi_get, ...)
  hits             lookups that found a live entry
  num_pages, page_size   the file's geometry

C<evictions>, C<expirations>, C<repairs>, C<reads> and C<hits> are
cumulative since the file was created (C<init_file>, or a change of
geometry, starts them again at 0), shared by every process, and kept in the
file's header (since format version 2), so C<fastmmap stats FILE> shows the same
numbers from outside.  Entries removed by C<clear> or C<remove> are neither
evictions nor expirations.

They are always counted, whatever C<enable_stats> says, and cost nothing a
benchmark can see: evictions and expirations are added once per expunge
(which rewrites a page anyway) with one relaxed atomic addition; reads and
hits are counted in each object's own memory and added to the file in
batches of 64, when C<stats> is called, and when the object is closed.  So
another process's view of C<reads> and C<hits> can be short by fewer than
64 per open cache object; the unflushed counts of a process killed with
SIGKILL are lost, and a forked child never adds the counts it inherited.  A
miss on a cache with a C<read_cb> is looked up twice (without the lock, then
under it before C<read_cb> runs) and counts as two reads.

C<entries> and C<used_bytes> are read from every page's header without
taking any lock (each page's change counter tells a consistent read from
one overlapping a change), so C<stats> is cheap enough to call often
(microseconds for the default 89 pages) and works inside a callback.
C<get_statistics> is unchanged: it reports the per-page counters that only
C<enable_stats> turns on.

=head2 multi_get($page_key, \@keys)

Fetches several keys that were stored together with C<multi_set> under the
same C<$page_key>, locking a single page for all of them.  Returns a hash
reference mapping each found key to its value; missing keys are left out.
No C<read_cb> is called.

Entries are stored under the combined key C<"$page_key-$key"> but in the
page chosen by C<$page_key>, so they can only be reached through
C<multi_get>, not through C<get>.

=head2 multi_set($page_key, \%pairs, [\%options | $expire])

Stores all the key/value pairs of C<%pairs> in the page chosen by
C<$page_key>, under one lock.  Expiry options are those of C<set>.  Values
stored this way are never dirty and C<write_cb> is not called for them;
individual pairs that do not fit are skipped silently.  Returns 1.  Every
value is serialized before the page is locked, so a serializer that dies
stores none of the pairs.

=head2 repaired_pages()

Returns how many pages this object found damaged and repaired (see
L</DIFFERENCES FROM THE C IMPLEMENTATION>).  Not available in the C
implementation.

=head2 cleanup()

Releases the object's resources: empties the cache if C<empty_on_exit> is
set, unmaps and closes the file, and deletes the file if C<unlink_on_exit>
is set.  Emptying and deleting happen only in the process that created the
object, never in forked children.  It runs automatically when the object is
destroyed, and at program exit for caches with C<empty_on_exit>; calling it
more than once is harmless.  After it, every other method croaks.

=head2 Functions

=over 4

=item Cache::FastMmap::parse_expire_time($spec, [$base])

Converts an expiry specification (see L</EXPIRY TIMES>) to seconds and adds
C<$base> when given.  C<'never'> always gives 0, and C<'now'> gives C<$base>
(or 1 without a base).

=item Cache::FastMmap::RoundPow2($n)

Returns the largest power of two that is not above C<$n> (the page size
rounding used by C<new>).

=back

=head1 EXPIRY TIMES

An expiry specification is a whole number of units, optionally followed by
white space and a unit letter: C<s> seconds (the default), C<m> minutes,
C<h> hours, C<d> days, C<w> weeks.  Upper and lower case are the same, so
C<'1M'> is one minute, not one month.  Anything after the first letter is
ignored (C<'2 hours'> works).  Only the leading digits count, so C<'1.5h'> is
one second, and a specification that does not start with a digit (C<' 5m'>,
C<'-5'>, C<'soon'>) counts as 0.  The words C<'never'> and C<'now'> are also
understood.

An entry expires at the start of its C<expire_on> second: it is expired
when the current time is equal to or later than C<expire_on>.

=head1 CALLBACKS AND WRITE-BACK

In B<write-through> mode (the default) every C<set> calls C<write_cb> after
the page lock has been released, whether or not the value fitted in the
cache.  C<get_and_set> stores through C<set> and behaves the same.

In B<write-back> mode C<set> and C<get_and_set> store the value marked as
dirty and do not call C<write_cb>.  The value is written out later, when it
leaves the cache: evicted to make room, removed by C<expire>, or removed by
C<empty> (explicitly or through C<empty_on_exit>).  Expired dirty entries are
written back too, with their C<expire_on>, so the callback can tell.  If a
write-back C<set> does not fit in the cache, C<write_cb> is called at once
instead.  Values coming from C<read_cb> or C<multi_set> are never dirty.
C<clear>, C<purge>, C<remove> and a C<set> over a dirty entry discard it
without writing it back.

Write-backs caused by eviction run while the page is locked, possibly in a
different process from the one that stored the value.  A C<write_cb> must
therefore not use the same cache object (it would croak, and the croak would
be ignored, losing that write-back).

Errors thrown by C<write_cb> and C<delete_cb> are caught and ignored; errors
from C<read_cb> and from the C<get_and_set> callback propagate, after the
page lock has been released.

=head1 CONDITIONAL STORES AND TOMBSTONES

Entries can carry a modification sequence number (I<modseq>), an unsigned
64-bit number that you choose, for example a version from your database.
It lets several processes that update the same key from different sources
make sure that an older update never overwrites a newer one.

=over 4

=item *

C<< set($key, $value, { modseq => $n }) >> stores the value with modseq
C<$n> unless the entry currently in the cache is live and has a higher
modseq, in which case nothing is stored and C<set> returns 0.  An equal
modseq is accepted.

=item *

C<< remove($key, { modseq => $n }) >> replaces the entry with a I<tombstone>
carrying C<$n>: a marker that the key was deleted at that version.  A
tombstone over a live entry with a higher or equal modseq does nothing (and
still returns 1); a tombstone never lowers an existing tombstone's modseq.

=item *

While a tombstone is live, C<get> and C<exists> treat the key as missing,
C<get_keys> does not list it, and a C<set> without a modseq, or with a lower
one, is refused.  A C<read_cb> value for such a key is returned but not
cached.  Once the tombstone expires it imposes nothing.

=item *

A plain C<set> over a live entry that has a modseq is allowed and clears the
modseq.  A plain C<remove> or C<get_and_remove> deletes tombstones too.

=back

C<get> with C<< modseq => \$ms >> and C<get_keys> modes 1 and 2 report the
stored modseq.

=head1 LOCKING, FORKING AND THREADS

Each object holds at most one page lock at a time, and only while one of its
methods runs (or while a C<get_and_set> callback or a callback without
C<allow_recursive> runs).  Using the same object again while it holds the
lock croaks with C<page N is already locked, can't lock multiple pages>;
callers can match the words C<already locked>.

After a fork, parent and child share the file and exclude each other
correctly.  A child never empties or deletes the cache on exit, even with
C<empty_on_exit> or C<unlink_on_exit>; only the creating process does.  The
file descriptor is closed on C<exec>.

A child forked while its parent holds a page lock (from inside a callback)
inherits the object but not the lock.  Its first call that would touch that
page croaks with C<page N was locked by the parent process when this process
forked>, and from then on the child's object works normally, on that page
too (it waits for the parent to release it, like any other process).

=head2 Threads

Perl ithreads work, and so do mod_perl's threaded MPMs (worker, event),
which clone interpreters the same way.  What is shared and what is not:

=over 4

=item *

The cache file and its contents are shared by every thread and process.
Threads and processes exclude each other on every page: a page lock is held
by one thread, and another thread of the same process waits for it like
another process would.

=item *

Each thread has its own handle.  An object that exists when a thread is
created is copied into the new thread with a handle of its own on the same
open file (a C<CLONE> costs a C<dup> and an C<mmap> per live object, no copy
of the data, and works after the process gave up the rights to open the
file, as Apache children do).  Lock ownership, the "one locked page per object" rule and
C<repaired_pages> are per thread.  Objects created inside a thread belong to
that thread.

=item *

C<empty_on_exit> and C<unlink_on_exit> act only in the thread (and process)
that created the object: a thread's copies never empty or delete the file
when the thread ends.

=item *

The time override used by the test helpers is process-wide in the engine.

=back

A thread that dies, or exits, inside a callback releases the page it held.

=head1 SAFETY

A page lock never outlives the call that took it, whatever happens during
the call:

=over 4

=item *

Keys and values are turned into bytes before any page is locked: C<FETCH>
of a tied scalar, get-magic and C<""> overloading run first.  Such code may
die (nothing is locked yet) or even use the cache itself (it works).

=item *

The only Perl code that runs while a page is locked is what upstream runs
there: the C<get_and_set> callback, C<read_cb>, C<write_cb> for entries a
write-back cache evicts, and the serializers these need.  A die from any of
them, or from a C<$SIG{ALRM}> or other signal handler that fires
meanwhile, releases the lock as it unwinds (the lock is held by a guard
object, created before the lock is taken, that unlocks when its scope is
left).  The error then propagates unchanged.

=item *

Warnings from the engine (a repaired page) are issued only after the lock
is released, so a C<$SIG{__WARN__}> handler that dies, or that uses or
closes the cache, is safe.

=item *

Perl code that closes the cache during a call (C<cleanup> from a callback
or a key's stringification) makes the call croak with a message saying so;
the handle is never used after it was freed.  The handle itself is kept
where Perl code cannot copy or forge it.

=back

A share file that shrinks while it is mapped (truncated by someone, or a
sparse file on a full filesystem) does not kill the process with SIGBUS: the
module's SIGBUS handler maps zero pages over that mapping, the call in
progress sees an empty cache, and the object warns and opens the file again
(rebuilding it) at its next call.  A SIGBUS about anything else is passed to
the handler that was installed before the first cache was created, or gets
the default action.  Setting C<$SIG{BUS}> after creating a cache replaces
this handler.

What is not covered: a process killed while it holds a lock, which the
robust locks handle (the next locker repairs the page, see
L</"DIFFERENCES FROM THE C IMPLEMENTATION">), and a callback that never
returns, which keeps its page locked as long as it runs.

=head1 DIFFERENCES FROM THE C IMPLEMENTATION

This distribution aims to behave exactly like Cache::FastMmap 1.63 at the
Perl level.  These are the deliberate differences:

=over 4

=item Own file format

The share file starts with a header that records the format version and the
geometry, the hash function is different (xxh3), and the page layout
differs.  Files cannot be shared with processes running the C
implementation; a file made by it (or with a different geometry) is
replaced by a fresh one instead of being misread.  A new file is built under
a temporary name and moved into place, so no process ever sees a half-made
file.  Because of the new hash, keys are spread over pages differently, which
can change which entries get evicted first.

=item Locks are robust process-shared mutexes

Page locks are process-shared mutexes in the file instead of C<fcntl> record
locks.  Uncontended locking costs no system call.  When a process dies while
holding a page lock (C<kill -9>, out of memory), the next process to lock
that page gets it immediately, checks the page and repairs it if needed,
instead of everybody waiting.  Two objects in the same process attached to
the same file now exclude each other too: if one object tries to lock a page
that another object of the same process holds (for example from inside a
C<get_and_set> callback), the call croaks with a message saying that the page
is already locked by another Cache::FastMmap object in this process, instead
of both objects silently changing the page at the same time.

=item Reads usually take no lock

C<get> and C<exists> first look the key up without locking, watching the
page's change counter, and lock the page only when it was being changed
meanwhile or the entry's last-access time has to be updated (at most once per
key per second).  What they return is the same as with the lock.

=item catch_deadlocks is a timed lock

With C<catch_deadlocks>, a lock attempt gives up after 10 seconds and
croaks.  No C<alarm> is used, so the program's own C<SIGALRM> handling and
timers are left alone.

=item $@ is left alone

Cache::FastMmap 1.63 resets C<$@> to the empty string in most methods, which
breaks callers that look at C<$@> after a cache call (L<CHI> does).  Here no
method changes C<$@> when it succeeds, as in 1.57 and earlier.

=item Unusable geometries are rejected

A page too small for its header, its slot table and one item makes the C
implementation corrupt memory and crash.  Here C<new> croaks with a message
naming C<page_size> and C<start_slots>.  Sizes that are not numbers, are
negative or come out as zero also croak, naming the option, where the C
implementation would carry on with nonsense values.

=item Damaged pages are repaired, not trusted

Every offset and length read from the file is checked before use.  A page
found to be inconsistent (for instance after a crash in the middle of an
update, or a file damaged on disk) is repaired: the entries that still check
out are kept, the rest are dropped, a warning naming the page and the file is
issued once, and the page is counted in L<repaired_pages()|/"repaired_pages()">.  A damaged file
can lose cached data but cannot crash the process.

=item Callbacks and serializers are fixed at construction

C<get>, C<set>, C<exists>, C<remove>, C<get_and_set>, C<multi_get> and
C<multi_set> run as a single call into the engine whenever the cache has no
callback they could need.  Which of them may do so, and which serializer and
compressor they use, is decided by C<new>.  Changing C<< $cache->{read_cb} >>,
C<< $cache->{serialize} >> and the like on a live object is not supported;
create the object with the callbacks it needs.  (C<context> may still be
changed: it is read on every callback.)

A serializer is called before the page is locked, rather than while it is
locked as in 1.63, so a serializer that uses the cache itself does not
deadlock.  The same holds for C<multi_set> and for deserializers in C<get>,
C<get_and_remove> and C<multi_get>, which run after the lock is released.
Only C<get_and_set> and values coming from C<read_cb> are still serialized
under the lock, as they must be stored atomically.

=item Threads work

Every version of the C implementation dies in C<CLONE> (C<Cache::FastMmap
does not support threads sorry>), so no threaded program or threaded
mod_perl MPM could use it.  Here threads are supported; see L</Threads>.

=item Internal lock-passing options are ignored

Upstream's internal C<skip_unlock> option of C<get> (return with the page
still locked) and C<_locked> option of C<set> and C<remove> (write without
locking) are ignored: a lock never outlives a call (see L</SAFETY>).

=item Additions

C<$Cache::FastMmap::IMPLEMENTATION> and the C<repaired_pages> method are
new.

=back

=head1 WHEN ONE MACHINE IS NOT ENOUGH

A share file is shared by the processes of one host.  When an application
runs on several hosts, put a distributed cache (memcached, Redis, ...)
behind this one and use this cache as each host's first level: L<CHI>'s
C<l1_cache> does exactly that.

  my $cache = CHI->new(
      driver     => 'Memcached',
      servers    => [ '10.0.0.5:11211' ],
      namespace  => 'app',
      expires_in => '10 min',
      l1_cache   => { driver => 'FastMmap', root_dir => '/var/cache/app',
                      cache_size => '64m' },
  );

What to expect (F<xt/tier.t> checks the points on reads, writes, staleness
and stats: it starts a real memcached on 127.0.0.1 and stands two groups of
processes in for two hosts):

=over 4

=item *

A C<set> writes to memcached and to the writing host's file.  A C<get>
looks in the host's file first: a hit there never asks memcached, whichever
process of the host wrote the entry.  A miss asks memcached and copies what
it finds into the host's file.

=item *

Nothing tells the other hosts about a write.  After host A sets a new
value, host B keeps serving the copy in its own file until that copy
expires.  CHI gives an L1 copy the expiry time of the entry it copied, so
B<an entry can be stale for as long as its C<expires_in>> (counted from the
write B copied).  Choose C<expires_in> as the staleness you can accept; for
values that must never be stale, read them from the shared tier directly
(a second CHI object without C<l1_cache>), or remove them on every host.

=item *

C<remove>, C<clear> and C<expire> through CHI act on memcached and on this
host's file only, for the same reason.

=item *

Each host's file keeps its own L</stats()>: its C<hits> are the reads that
memcached never saw.

=back

=head1 EXAMPLES

The distribution's F<eg/> directory has short, working programs:

=over 4

=item F<eg/demo.pl>

A parent creates a cache and forks workers that share it.

=item F<eg/modperl/startup.pl> and F<eg/modperl/Handler.pm>

mod_perl 2 under Apache's prefork MPM: the cache is created in the Apache
parent (C<PerlPostConfigRequire>), before the children are forked.

=item F<eg/netserver.pl>

A L<Net::Server::PreFork> server that creates the cache in C<pre_loop_hook>.

=item F<eg/starman.psgi>

A PSGI application for L<Starman> started with C<--preload-app>, so the
workers share a cache created by the master.

=back

The tests in F<xt/> run each of them for real.

=head1 SEE ALSO

L<fastmmap>, the command that inspects, verifies and repairs share files;
L<CHI>, which can use this module as a driver; L<Cache::Cache>;
L<Storable>, L<Sereal>, L<JSON>, L<Compress::Zlib>.

=head1 COPYRIGHT AND LICENSE

This library is free software; you can redistribute it and/or modify it
under the same terms as Perl itself.

=cut
