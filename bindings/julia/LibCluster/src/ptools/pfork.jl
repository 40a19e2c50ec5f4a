# PTools' pfork over the library's fork (`cluster_pfork`): the library
# forks, gives each child its own result pipe, reads every pipe at once,
# reaps every child, kills them with the forking thread (PR_SET_PDEATHSIG)
# and reports each child's end (value, failure, exit status, signal,
# timeout). Julia's part is the child's entry, a C function made with
# `@cfunction` before any fork, and turning the reports into values and
# per-child errors.
#
# A child is a copy of a running Julia process, and three things of the
# parent must not reach into it:
#
# - Julia 1.5's code generator writes code through a `/proc/self/mem`
#   descriptor opened once, which in a child still refers to the PARENT's
#   memory: a child compiling anything writes there and aborts. The entry's
#   first act, before any code is compiled in the child, is to open a fresh
#   `/proc/self/mem` and `dup` it over the inherited descriptor (found by
#   its link, `/proc/<parent>/mem`; none on versions that do not keep one).
#   The entry and everything it runs up to that point are compiled in the
#   parent beforehand, by a dry call through the same C pointer.
# - libuv's epoll instance is shared with the parent: a child closing an
#   inherited handle (Julia's `exit`, a finalizer) or running the event loop
#   would remove the parent's registrations or take its events. The child
#   gets a new, empty epoll instance under the same descriptor number.
# - LibCluster's runtime: the child's copy is closed (`detach_fork_child!`)
#   without a call into the library, and finalizers do not run in a child
#   (they would release the parent's objects: files, segments, handles).

export pfork, pfork_shm

# ------------------------------------------------------------------ errors

"""
    ForkChildError(index, os_pid, reason, code, text)

Child `index` of a `pfork` (the `i` its function was given; OS pid `os_pid`,
0 if it was never started) did not return a value. `reason`:

- `:exception`: its function threw; `text` is the exception's `showerror`
  text and the child's stacktrace;
- `:exited`: it exited (`exit(3)`, `ccall(:_exit, ...)`) before returning;
  `code` is the exit status;
- `:signaled`: a signal ended it (a crash, `kill`); `code` is the signal;
- `:timeout`: still running at `pfork`'s timeout, killed (SIGKILL);
- `:no_result`: it exited with status 0 without a complete result;
- `:undecodable`: its result cannot be deserialized in the parent (a type
  the child defined, say);
- `:not_started`: it could not be forked.

For the others, `text` is what the library saw, e.g. "was killed by signal
11 (SIGSEGV)".
"""
struct ForkChildError <: Exception
    index::Int
    os_pid::Int
    reason::Symbol
    code::Int
    text::String
end

function Base.showerror(io::IO, e::ForkChildError)
    print(io, "ForkChildError: child ", e.index)
    e.os_pid > 0 && print(io, " (pid ", e.os_pid, ")")
    print(io, e.reason === :exception ? " threw: " : " ", e.text)
end

"""
    PForkError(exceptions, results)

Thrown by `pfork` (and `pfork_shm`) when children failed: `exceptions` holds
a `ForkChildError` per failed child, in index order; `results` every
child's outcome in index order (its value, or its `ForkChildError`).
"""
struct PForkError <: Exception
    exceptions::Vector{ForkChildError}
    results::Vector{Any}
end

function Base.showerror(io::IO, e::PForkError)
    k, n = length(e.exceptions), length(e.results)
    print(io, "PForkError: ", k, " of ", n, n == 1 ? " pfork child" : " pfork children", " failed")
    for x in e.exceptions
        print(io, "\n  ")
        showerror(io, x)
    end
end

# ------------------------------------------------------------------ child

"What a child needs, reached from the C `user_data` pointer (the same address in the child)."
mutable struct ForkJob
    f::Any
    args::Tuple
    parent_pid::Cint
    seed::UInt64
    dry::Bool          # the warm-up call in the parent: compile, change nothing
end

const O_CLOEXEC = Cint(0o2000000)
const F_GETFD = Cint(1)
const F_GETFL = Cint(3)
const FD_CLOEXEC = Cint(1)
# `d_name` in glibc's and musl's `struct dirent` on 64-bit Linux (after
# d_ino, d_off, d_reclen, d_type).
const DIRENT_NAME_OFFSET = 19

"The descriptor number a `/proc/self/fd` entry names (-1: `.`, `..`)."
function fd_of_entry(name::Ptr{UInt8})
    fd = Cint(0)
    i = 0
    while true
        c = unsafe_load(name, i + 1)
        c == 0x00 && break
        (0x30 <= c <= 0x39) || return Cint(-1)
        fd = fd * Cint(10) + Cint(c - 0x30)
        i += 1
    end
    i == 0 ? Cint(-1) : fd
end

"""
    replace_inherited_proc_mem(parent, dry)

In a child: every descriptor of `/proc/<parent>/mem` (Julia's code
generator's) is replaced by a fresh `/proc/self/mem` opened with the same
flags, so that code compiled here is written here. Only system calls: this
runs before anything is compiled in the child. `dry` (in the parent, with
`parent` = its own pid): opens and closes the replacement, replaces nothing.
"""
function replace_inherited_proc_mem(parent::Cint, dry::Bool)
    target = string("/proc/", parent, "/mem")
    buf = Vector{UInt8}(undef, 64)
    dir = ccall(:opendir, Ptr{Cvoid}, (Cstring,), "/proc/self/fd")
    dir == C_NULL && return nothing
    dfd = ccall(:dirfd, Cint, (Ptr{Cvoid},), dir)
    while true
        ent = ccall(:readdir, Ptr{UInt8}, (Ptr{Cvoid},), dir)
        ent == C_NULL && break
        name = ent + DIRENT_NAME_OFFSET
        fd = fd_of_entry(name)
        (fd < 0 || fd == dfd) && continue
        n = ccall(:readlinkat, Cssize_t, (Cint, Ptr{UInt8}, Ptr{UInt8}, Csize_t), dfd, name, buf, length(buf))
        n == sizeof(target) || continue
        ccall(:memcmp, Cint, (Ptr{UInt8}, Ptr{UInt8}, Csize_t), buf, target, n) == 0 || continue
        flags = ccall(:fcntl, Cint, (Cint, Cint), fd, F_GETFL)
        cloexec = ccall(:fcntl, Cint, (Cint, Cint), fd, F_GETFD) & FD_CLOEXEC != 0
        fresh = ccall(:open, Cint, (Cstring, Cint), "/proc/self/mem", flags | O_CLOEXEC)
        fresh < 0 && continue
        dry || ccall(:dup3, Cint, (Cint, Cint, Cint), fresh, fd, cloexec ? O_CLOEXEC : Cint(0))
        ccall(:close, Cint, (Cint,), fresh)
    end
    ccall(:closedir, Cint, (Ptr{Cvoid},), dir)
    nothing
end

"""
    replace_event_backend(dry)

In a child: libuv's epoll descriptor becomes a new, empty epoll instance,
so that nothing the child's libuv does (closing handles, polling) changes
or takes the parent's. Watchers the parent registered are not watched in
the child.
"""
function replace_event_backend(dry::Bool)
    backend = ccall(:uv_backend_fd, Cint, (Ptr{Cvoid},), Base.eventloop())
    backend < 0 && return nothing
    fresh = ccall(:epoll_create1, Cint, (Cint,), O_CLOEXEC)
    fresh < 0 && return nothing
    dry || ccall(:dup3, Cint, (Cint, Cint, Cint), fresh, backend, O_CLOEXEC)
    ccall(:close, Cint, (Cint,), fresh)
    nothing
end

"""
The C entry of every child (`cluster_fork_fn`). Made into a C pointer and
called once dry in the parent (`child_entry`), so that it and the
descriptor fixes are compiled before any fork.
"""
function fork_child_entry(ud::Ptr{Cvoid}, index::Int32, child::Ptr{Cvoid})::Int32
    job = unsafe_pointer_to_objref(ud)::ForkJob
    replace_inherited_proc_mem(job.parent_pid, job.dry)
    replace_event_backend(job.dry)
    job.dry && return Int32(0)
    # From here on the child may compile.
    try
        return run_fork_child(job, Int(index) + 1, child)
    catch
        # Not even the error could be reported: a failure without text.
        return Int32(2)
    end
end

finalizers_off() = @static if isdefined(Base.GC, :enable_finalizers)
    Base.GC.enable_finalizers(false)
else
    ccall(:jl_gc_enable_finalizers, Cvoid, (Ptr{Cvoid}, Int32), ccall(:jl_get_ptls_states, Ptr{Cvoid}, ()), 0)
end

# `f(i, args...)` in the latest world through the builtin itself:
# `invokelatest` would be compiled in each child for each number of arguments.
@static if isdefined(Core, :_call_latest)
    call_latest(@nospecialize(f), i::Int, @nospecialize(args::Tuple)) = Core._call_latest(f, i, args...)
else
    call_latest(@nospecialize(f), i::Int, @nospecialize(args::Tuple)) = Core._apply_latest(f, (i,), args)
end

function run_fork_child(job::ForkJob, i::Int, child::Ptr{Cvoid})
    LibCluster.detach_fork_child!()
    finalizers_off()
    # Other Julia threads do not exist here; one that was running Julia
    # code at the fork would never reach the collector's safepoint.
    Threads.nthreads() > 1 && GC.enable(false)
    Random.seed!(hash(i, job.seed))
    value = try
        call_latest(job.f, i, job.args)
    catch e
        return fail_child(child, LibCluster.safe_showerror(e) * stacktrace_text(catch_backtrace()))
    end
    bytes = try
        take!(LibCluster.encode_ok(value))
    catch e
        return fail_child(child, "its result (a $(typeof(value))) cannot be serialized: " * LibCluster.safe_showerror(e))
    end
    flush_buffered(stdout)
    flush_buffered(stderr)
    st = GC.@preserve bytes CAPI.cluster_fork_return(child, pointer(bytes), Csize_t(length(bytes)))
    st == CAPI.CLUSTER_OK || return fail_child(child, "its result could not be returned: " * CAPI.status_text(st))
    Int32(0)
end

"The child's stacktrace below `pfork`'s frames, numbered as Julia prints one."
function stacktrace_text(bt)
    try
        frames = LibCluster.portable_backtrace(bt)
        isempty(frames) && return ""
        io = IOBuffer()
        print(io, "\nStacktrace:")
        for (k, (frame, n)) in enumerate(frames)
            print(io, "\n [", k, "] ")
            show(io, frame)
            n > 1 && print(io, " (repeats ", n, " times)")
        end
        String(take!(io))
    catch
        ""
    end
end

function fail_child(child::Ptr{Cvoid}, text::String)
    flush_buffered(stdout)
    flush_buffered(stderr)
    CAPI.cluster_fork_fail(child, replace(text, '\0' => ' '))
    Int32(1)
end

"""
Writes what a Julia stream holds in its own buffer (an `IOStream` to a
file, a libuv stream's send buffer); a libuv write already made is done.
Never a zero-length flush of a libuv stream, which would wait for the event
loop (a task switch) for nothing.
"""
function flush_buffered(io::IO)
    try
        if io isa IOStream
            flush(io)
        elseif io isa Base.LibuvStream && hasfield(typeof(io), :sendbuf)
            b = getfield(io, :sendbuf)
            b isa IOBuffer && bytesavailable(b) > 0 && flush(io)
        end
    catch
    end
    nothing
end

# ----------------------------------------------------------------- parent

# Code first compiled in a child is compiled again in every child (and
# lost with it): what every child runs is compiled here, in the parent,
# beforehand, so that children inherit it.

const CHILD_ENTRY = Ref{Ptr{Cvoid}}(C_NULL)

"The children's C entry, made and compiled (a dry call) on first use, with the rest of a child's path."
function child_entry()
    p = CHILD_ENTRY[]
    p != C_NULL && return p
    p = @cfunction(fork_child_entry, Int32, (Ptr{Cvoid}, Int32, Ptr{Cvoid}))
    dry = ForkJob(nothing, (), Cint(getpid()), UInt64(0), true)
    GC.@preserve dry ccall(p, Int32, (Ptr{Cvoid}, Int32, Ptr{Cvoid}), pointer_from_objref(dry), Int32(0), C_NULL)
    precompile(run_fork_child, (ForkJob, Int, Ptr{Cvoid}))
    precompile(call_latest, (Any, Int, Tuple))
    precompile(fail_child, (Ptr{Cvoid}, String))
    precompile(LibCluster.detach_fork_child!, ())
    precompile(finalizers_off, ())
    precompile(Random.seed!, (UInt64,))
    for v in Any[nothing, 1, 1.0, "s", :s, true, (1, 2.0, "s"), [1.0], [1], UInt8[1], Any[1]]
        decode_fork_value(take!(LibCluster.encode_ok(v)))
    end
    CHILD_ENTRY[] = p
end

"Compiles `f(::Int, args...)` here, before the fork, unless it is already."
function precompile_call(@nospecialize(f), @nospecialize(args::Tuple))
    try
        precompile(f, (Int, map(Core.Typeof, args)...))
    catch
    end
    nothing
end

# The result types serialized once here (below), and the largest result
# this costs a copy of.
const WARM_RESULTS = Set{Any}()
const WARM_MAX_BYTES = 1 << 20
const WARM_LOCK = ReentrantLock()     # pfork may run on several threads

"""
After a `pfork`: the serializer of each new result type is compiled here by
serializing one of its values (up to 1 MiB), so that the next children
serialize such values without compiling first.
"""
function warm_result_types(results::Vector{Any})
    for v in results
        T = typeof(v)
        (v isa ForkChildError || LibCluster.fast_value(v)) && continue
        lock(() -> T in WARM_RESULTS || (push!(WARM_RESULTS, T); false), WARM_LOCK) && continue
        try
            Base.summarysize(v) <= WARM_MAX_BYTES && LibCluster.encode_ok(v)
        catch
        end
    end
    nothing
end

function timeout_ms(timeout)
    timeout === nothing && return CAPI.CLUSTER_FOREVER
    (timeout isa Real && timeout >= 0) || throw(ArgumentError("pfork: timeout must be nothing or seconds >= 0, got $timeout"))
    isfinite(timeout) ? round(Int64, 1000 * timeout) : CAPI.CLUSTER_FOREVER
end

"""
    pfork(n, f, args...; timeout=nothing, on_error=nothing) -> Vector{Any}

PTools' `pfork`: forks `n` children of this process; child `i` runs
`f(i, args...)` on a copy of this process's memory (`f`, `args` and
everything else are there as they were at the call, nothing is sent) and
returns its value, serialized back. Returns the `n` values in index order.

A child that throws, exits, crashes or is killed does not return a value:
`pfork` then throws a `PForkError` holding a `ForkChildError` per failed
child (which child, its pid, and the exception text, exit status or
signal) and every child's outcome; with `on_error`, a failed child's slot
holds `on_error(err::ForkChildError)` instead (as `pmap`'s `on_error`).
`timeout` (seconds): children still running then are killed (SIGKILL) and
reported as `:timeout`.

Every child has been reaped when `pfork` returns, and children die with
this process. Memory is copy-on-write: only the returned values and
shared mappings (`pfork_shm`, `pmap_shm_create`'s segments) come back.

Blocking: the calling thread waits for the children; this process's other
tasks (and its part in the cluster: calls to it queue meanwhile) run again
when `pfork` returns, as with PTools. Unlike PTools, allowed with workers,
on the head and on a worker. A child must not use the cluster (an error
there) and should not yield to other tasks (they are the parent's,
copied). See the package README (PTools: pfork).
"""
function pfork(n::Integer, f, args...; timeout = nothing, on_error = nothing)
    0 <= n <= typemax(Int32) || throw(ArgumentError("pfork: cannot fork $n children"))
    LibCluster.IN_FORK_CHILD[] && error("pfork: a pfork child cannot fork children of its own")
    ms = timeout_ms(timeout)
    n == 0 && return Any[]
    entry = child_entry()
    precompile_call(f, args)
    # Children must not inherit output waiting in a buffer (they would write it again).
    flush_buffered(stdout)
    flush_buffered(stderr)
    # One draw from this task's generator: each call seeds its children anew.
    job = ForkJob(f, args, Cint(getpid()), Random.rand(UInt64), false)
    out = Ref{Ptr{Cvoid}}(C_NULL)
    st = GC.@preserve job CAPI.cluster_pfork(Int32(n), entry, pointer_from_objref(job), ms, out)
    r = out[]
    r == C_NULL && (CAPI.check(st); error("pfork: no results"))
    results = Vector{Any}(undef, n)
    failed = ForkChildError[]
    try
        for i in 1:n
            v = child_result(r, i)
            v isa ForkChildError && push!(failed, v)
            results[i] = v
        end
    finally
        CAPI.cluster_fork_results_free(r)
    end
    warm_result_types(results)
    isempty(failed) && return results
    on_error === nothing && throw(PForkError(failed, results))
    for i in 1:n
        v = results[i]
        v isa ForkChildError && (results[i] = on_error(v))
    end
    results
end

const REASONS = Dict(CAPI.CLUSTER_FORK_FAILED => :exception, CAPI.CLUSTER_FORK_EXITED => :exited,
                     CAPI.CLUSTER_FORK_SIGNALED => :signaled, CAPI.CLUSTER_FORK_TIMED_OUT => :timeout,
                     CAPI.CLUSTER_FORK_NO_RESULT => :no_result, CAPI.CLUSTER_FORK_NOT_STARTED => :not_started)

"Child `i`'s value (1-based), or its `ForkChildError`."
function child_result(r::Ptr{Cvoid}, i::Int)
    outcome, code, pid, msg = Ref{Int32}(0), Ref{Int32}(0), Ref{Int32}(0), Ref{Ptr{UInt8}}(C_NULL)
    CAPI.check(CAPI.cluster_fork_results_child(r, Csize_t(i - 1), outcome, code, pid, msg))
    if outcome[] != CAPI.CLUSTER_FORK_RETURNED
        reason = get(REASONS, outcome[], :exception)
        return ForkChildError(i, Int(pid[]), reason, reason in (:exited, :signaled, :timeout) ? Int(code[]) : 0,
                              what_happened(unsafe_string(msg[]), i - 1, Int(pid[])))
    end
    data, len = Ref{Ptr{UInt8}}(C_NULL), Ref{Csize_t}(0)
    CAPI.check(CAPI.cluster_fork_results_get(r, Csize_t(i - 1), data, len))
    try
        # Read in place: the bytes are the results', freed after.
        decode_fork_value(unsafe_wrap(Array, data[], Int(len[])))
    catch e
        ForkChildError(i, Int(pid[]), :undecodable, 0, "returned a value that cannot be deserialized here: " *
                                                        LibCluster.safe_showerror(e))
    end
end

"""
The library's account of a child without its subject ("child 2 (pid 4711)
", 0-based: the Julia index differs) nor, for a failure, "failed: ".
"""
function what_happened(msg::String, index0::Int, pid::Int)
    for subject in ("child $index0 (pid $pid) failed: ", "child $index0 (pid $pid) ", "child $index0 ")
        startswith(msg, subject) && return msg[nextind(msg, 0, length(subject) + 1):end]
    end
    msg
end

"A child's value as `encode_ok` wrote it, read with a serializer of its own."
function decode_fork_value(bytes::AbstractVector{UInt8})
    isempty(bytes) && return nothing
    io = IOBuffer(bytes)
    tag = read(io, UInt8)
    tag == LibCluster.TAG_OK_FAST && return LibCluster.read_value(io)
    tag == LibCluster.TAG_OK || error("not a value (tag $tag)")
    Base.invokelatest(LibCluster.deserialize, io)
end

# ------------------------------------------------------------- pfork_shm

"A zeroed array over anonymous shared memory: what children write, the parent sees. No name, nothing in /dev/shm."
function shared_output(T::Type, dims)
    isbitstype(T) || throw(ArgumentError("pfork_shm: the element type must be a bits type (isbitstype), got $T"))
    d = dims isa Integer ? (Int(dims),) : Tuple(Int(x) for x in dims)
    any(<(0), d) && throw(ArgumentError("pfork_shm: negative dimension in $dims"))
    Mmap.mmap(Mmap.Anonymous(), Array{T,length(d)}, d, 0; shared = true)
end

"""
    pfork_shm(n, T, dims, f, args...; kw...) -> Array{T}
    pfork_shm(n, [(T1, dims1), (T2, dims2), ...], f, args...; kw...) -> [Array{T1}, Array{T2}, ...]

PTools' `pfork_shm`: `pfork(n, ...)` whose children write their results
into shared arrays the parent returns afterwards: child `i` runs
`f(i, r, args...)` (one array) or `f(i, r1, r2, ..., args...)`, where each
array (element type `T`, a bits type, dimensions `dims`, zeroed) is in
memory shared by the parent and every child; its return value is ignored.
Keywords and failures as `pfork` (a failed child: `PForkError`). The
arrays are ordinary Julia arrays over an anonymous shared mapping, freed
with them: nothing is created in /dev/shm.
"""
pfork_shm(n::Integer, T::Type, dims::Union{Integer,Tuple}, f, args...; kw...) =
    pfork_shm(n, [(T, dims)], f, args...; kw...)[1]

function pfork_shm(n::Integer, shmems::Union{AbstractVector,Tuple}, f, args...; kw...)
    for s in shmems
        (s isa Tuple && length(s) == 2 && s[1] isa Type && (s[2] isa Integer || s[2] isa Tuple)) ||
            throw(ArgumentError("pfork_shm: expected (element type, dims) pairs, got $(repr(s))"))
    end
    outs = Array[shared_output(s[1], s[2]) for s in shmems]
    pfork(n, (i, a...) -> (f(i, outs..., a...); nothing), args...; kw...)
    outs
end
