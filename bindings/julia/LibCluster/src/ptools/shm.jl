# PTools' shared memory over libcluster's shm service (`cluster_shm_*`):
# the library creates a segment (every page reserved: a full /dev/shm is an
# error at creation, never a SIGBUS later), names it with the cluster's
# identity so that a crashed run's segments can be found again, and maps it
# in every local process as part of the creation. Julia's part is the view:
# on each process an ordinary `Array` over the mapping (`unsafe_wrap`),
# bound to a global of Main (`pmap_shm_create`) or to task-local storage
# (server tasks, stasks.jl).
#
# Lifetime: each array holds a `cluster_shm` handle, which keeps the mapping
# valid; the array's own finalizer releases it. `VIEWS` holds the array
# (hence the handle) while the segment is linked; `unlink_shm` drops it and
# the bindings on every process, so the mapping goes once nothing reaches
# the array any more, never while something does.

export ShmCfg, pmap_shm_create, unlink_shm, shm_orphans, remove_shm_orphans

"""
    ShmCfg(name::Symbol, T::Type, dims)

A shared segment as PTools describes it: an array of `T` (a bits type) with
dimensions `dims` (an `Int` or a tuple), bound to `name`. Fields as
PTools': `sname`, `stype`, `sdims`.
"""
struct ShmCfg
    sname::Symbol
    stype::Type
    sdims::Union{Tuple,Int}

    function ShmCfg(name::Symbol, T::Type, dims::Union{Integer,Tuple})
        isbitstype(T) || throw(ArgumentError("ShmCfg($(repr(name)), $T, ...): the element type must be a bits type " *
                                             "(isbitstype), as the memory is shared as it is"))
        sizeof(T) > 0 || throw(ArgumentError("ShmCfg($(repr(name)), $T, ...): elements of 0 bytes"))
        d = dims isa Integer ? Int(dims) : Tuple(Int(x) for x in dims)
        any(<(0), dims_of(d)) && throw(ArgumentError("ShmCfg($(repr(name)), $T, $dims): negative dimension"))
        new(name, T, d)
    end
end

dims_of(d::Int) = (d,)
dims_of(d::Tuple) = d
dims_of(c::ShmCfg) = dims_of(c.sdims)

# The tags of include/cluster.h, so that a C or C++ process views the
# segment with the same element type; any other bits type is opaque bytes.
const ELEM_TAGS = Dict{Any,Int32}(
    UInt8 => CAPI.CLUSTER_ELEM_U8, Int8 => CAPI.CLUSTER_ELEM_I8,
    UInt16 => CAPI.CLUSTER_ELEM_U16, Int16 => CAPI.CLUSTER_ELEM_I16,
    UInt32 => CAPI.CLUSTER_ELEM_U32, Int32 => CAPI.CLUSTER_ELEM_I32,
    UInt64 => CAPI.CLUSTER_ELEM_U64, Int64 => CAPI.CLUSTER_ELEM_I64,
    Float32 => CAPI.CLUSTER_ELEM_F32, Float64 => CAPI.CLUSTER_ELEM_F64,
    Bool => CAPI.CLUSTER_ELEM_BOOL,
    ComplexF32 => CAPI.CLUSTER_ELEM_COMPLEX64, ComplexF64 => CAPI.CLUSTER_ELEM_COMPLEX128)

elem_tag(@nospecialize(T)) = get(ELEM_TAGS, T, CAPI.CLUSTER_ELEM_OPAQUE)

# PTools takes anything but a string for "no prefix" (start_stasks' default is `false`).
prefix_of(p::AbstractString) = String(p)
prefix_of(::Union{Nothing,Bool}) = ""
prefix_of(p) = throw(ArgumentError("a shared memory prefix is a string; got $(repr(p))"))

cfg_list(c::ShmCfg) = ShmCfg[c]
cfg_list(cs::AbstractVector) = ShmCfg[c for c in cs]
cfg_list(x) = throw(ArgumentError("expected a ShmCfg or an array of them; got $(repr(x))"))

# unlink_shm takes names too, as PTools' (`free_shmem`).
name_of(c::ShmCfg) = c.sname
name_of(s::Symbol) = s
name_of(x) = throw(ArgumentError("expected a ShmCfg or a Symbol; got $(repr(x))"))
name_list(x::Union{ShmCfg,Symbol}) = Symbol[name_of(x)]
name_list(xs::AbstractVector) = Symbol[name_of(x) for x in xs]
name_list(x) = throw(ArgumentError("expected a ShmCfg, a Symbol or an array of them; got $(repr(x))"))

# ------------------------------------------------------- this process's views

"This process's array over each segment it maps: (prefix, name) => the array."
const VIEWS = Dict{Tuple{String,Symbol},Array}()

function release_handle(h::Ptr{Cvoid})
    CAPI.LIB_HANDLE[] != C_NULL && CAPI.cluster_shm_free(h)
    nothing
end

"An `Array{T}` over the mapping of handle `h`, which it owns from now on."
function wrap_segment(h::Ptr{Cvoid}, name::Symbol, @nospecialize(T::Type))
    tag = Ref{Int32}(0)
    size = Ref{UInt32}(0)
    nd = Ref{Csize_t}(0)
    dims = Vector{UInt64}(undef, 8)
    CAPI.check(CAPI.cluster_shm_info(h, tag, size, dims, Csize_t(length(dims)), nd))
    if nd[] > length(dims)
        resize!(dims, Int(nd[]))
        CAPI.check(CAPI.cluster_shm_info(h, tag, size, dims, Csize_t(length(dims)), nd))
    end
    size[] == sizeof(T) ||
        error("shared segment $name has elements of $(size[]) bytes, not $(sizeof(T)) ($T)")
    want = elem_tag(T)
    tag[] == want || tag[] == CAPI.CLUSTER_ELEM_OPAQUE || want == CAPI.CLUSTER_ELEM_OPAQUE ||
        error("shared segment $name holds elements of tag $(tag[]), not $T")
    data = Ref{Ptr{Cvoid}}(C_NULL)
    len = Ref{Csize_t}(0)
    CAPI.check(CAPI.cluster_shm_data(h, data, len))
    d = Tuple(Int(x) for x in dims[1:Int(nd[])])
    prod(d) * sizeof(T) <= len[] || error("shared segment $name: $(len[]) bytes mapped for $d elements of $T")
    if prod(d) == 0
        # Nothing is shared (and the library's pointer may not be aligned).
        release_handle(h)
        return Array{T}(undef, d)
    end
    a = unsafe_wrap(Array, Ptr{T}(data[]), d; own = false)
    # The array keeps the handle, hence the mapping: released only once
    # nothing reaches the memory.
    finalizer(_ -> release_handle(h), memory_owner(a))
    a
end

# What lives as long as an array's memory: the array itself before Julia
# 1.11 (a reshaped array keeps its parent), its `Memory` since (arrays made
# from it, by `reshape` for one, share the Memory, not the Array).
memory_owner(a::Array) = isdefined(a, :ref) ? getfield(getfield(a, :ref), :mem) : a

"""
This process's array over segment `name` with `prefix` (the library has
mapped it here, at its creation), made on first use and kept in `VIEWS`.
"""
function view_of(name::Symbol, prefix::String, @nospecialize(T::Type))
    key = (prefix, name)
    a = get(VIEWS, key, nothing)
    if a !== nothing
        eltype(a) === T && return a
        error("shared segment $name (prefix $(repr(prefix))) is viewed here as $(eltype(a)), not $T")
    end
    out = Ref{Ptr{Cvoid}}(C_NULL)
    CAPI.check(CAPI.cluster_shm_find(context(), String(name), prefix, out))
    h = out[]
    a = try
        wrap_segment(h, name, T)
    catch
        release_handle(h)
        rethrow()
    end
    VIEWS[key] = a
    a
end

"Binds Main's `name` to `a`, which closures then never carry (each process has its own)."
function bind_global(name::Symbol, a::Array)
    lock(() -> (LibCluster.LOCAL_GLOBALS[name] = a), LibCluster.SERIAL_LOCK)
    try
        Core.eval(Main, Expr(:global, Expr(:(=), name, QuoteNode(a))))
    catch err
        lock(() -> delete!(LibCluster.LOCAL_GLOBALS, name), LibCluster.SERIAL_LOCK)
        # e.g. a constant, or a name Main has from Base (`big`)
        error("shared segment $name cannot be bound to Main.$name on process $(myid()): " * sprint(showerror, err))
    end
    nothing
end

function unbind_global(name::Symbol, a::Array)
    lock(LibCluster.SERIAL_LOCK) do
        get(LibCluster.LOCAL_GLOBALS, name, nothing) === a && delete!(LibCluster.LOCAL_GLOBALS, name)
    end
    if isdefined(Main, name) && !isconst(Main, name) && getfield(Main, name) === a
        Core.eval(Main, Expr(:global, Expr(:(=), name, nothing)))
    end
    nothing
end

"Drops this process's view of each segment: from `VIEWS`, Main and this task's storage."
function drop_views(names::Vector{Symbol}, prefix::String)
    for name in names
        a = pop!(VIEWS, (prefix, name), nothing)
        a === nothing && continue
        unbind_global(name, a)
        tls = task_local_storage()
        get(tls, name, nothing) === a && delete!(tls, name)
    end
    nothing
end

"On each process: views of `specs` ((name, T) pairs) bound in Main; false when it is on another host."
function bind_globals(specs::Vector{Tuple{Symbol,Any}}, prefix::String, host::String)
    for (name, T) in specs
        a = try
            view_of(name, prefix, T)
        catch err
            # The library maps a segment on its creator's host only.
            err isa CAPI.ClusterError && err.status == CAPI.CLUSTER_ERR_NOT_FOUND && gethostname() != host && return false
            rethrow()
        end
        bind_global(name, a)
    end
    true
end

# ---------------------------------------------------------------- creating

"Makes segment `c` here and has every local process map it; waits in this task only."
function create_segment(c::ShmCfg, prefix::String)
    name = String(c.sname)
    ('\0' in name || '\0' in prefix) && throw(ArgumentError("a shared segment name or prefix cannot hold NUL"))
    dims = UInt64[d for d in dims_of(c)]
    GC.@preserve name prefix dims begin
        spec = Ref(CAPI.ShmSpec(pointer(name), pointer(prefix), elem_tag(c.stype), UInt32(sizeof(c.stype)),
                                isempty(dims) ? Ptr{UInt64}(C_NULL) : pointer(dims), Csize_t(length(dims))))
        LibCluster.run_op(out -> CAPI.cluster_shm_create_async(context(), spec, C_NULL, 0, out))
    end
    nothing
end

"""
Removes each segment from /dev/shm and has every process drop its mapping
(`cluster_shm_unlink_async`); the names this cluster had.
"""
function unlink_in_library(names::Vector{Symbol}, prefix::String)
    found = Symbol[]
    for name in names
        try
            LibCluster.run_op(out -> CAPI.cluster_shm_unlink_async(context(), String(name), prefix, out))
            push!(found, name)
        catch err
            # PTools' unlink_shm ignores what does not exist.
            err isa CAPI.ClusterError && err.status == CAPI.CLUSTER_ERR_NOT_FOUND && continue
            rethrow()
        end
    end
    found
end

"`f(args...)` on each of `pids` at once, waited for; a process that has left is skipped."
function on_each_live(f, pids, args...)
    futures = Future[]
    for p in pids
        try
            push!(futures, remotecall(f, p, args...))
        catch err
            err isa ProcessExitedException || rethrow()
        end
    end
    for fu in futures
        try
            fetch(fu)
        catch err
            err isa ProcessExitedException || rethrow()
        end
    end
    nothing
end

"Has every process drop its views of `names` (a process that has left has none)."
function drop_views_everywhere(names::Vector{Symbol}, prefix::String)
    drop_views(names, prefix)
    on_each_live(drop_views, filter(!=(myid()), procs()), names, prefix)
end

"Makes the segments of `cfgs`, replacing those of the same names (as PTools); none is left on failure."
function create_segments(cfgs::Vector{ShmCfg}, prefix::String)
    names = Symbol[c.sname for c in cfgs]
    allunique(names) || throw(ArgumentError("shared segments of the same name: $names"))
    replaced = unlink_in_library(names, prefix)
    isempty(replaced) ? drop_views(names, prefix) : drop_views_everywhere(replaced, prefix)
    made = Symbol[]
    try
        for c in cfgs
            create_segment(c, prefix)
            push!(made, c.sname)
        end
    catch
        unlink_in_library(made, prefix)
        rethrow()
    end
    nothing
end

"""
    pmap_shm_create(shmcfg, shmpfx = "")

Creates the segments of `shmcfg` (a [`ShmCfg`](@ref) or an array of them)
and binds each, on every Julia process of this host, to the global of
`Main` it names: an ordinary `Array` over that process's mapping, so that
each sees the others' writes. A segment of the same name and prefix in this
cluster is replaced (as PTools). `shmpfx` keeps jobs apart (it is part of
the name in /dev/shm). A /dev/shm too small for it is an error here; on any
failure no segment is left.
"""
function pmap_shm_create(shmcfg, shmpfx = "")
    cfgs = cfg_list(shmcfg)
    prefix = prefix_of(shmpfx)
    create_segments(cfgs, prefix)
    names = Symbol[c.sname for c in cfgs]
    try
        specs = Tuple{Symbol,Any}[(c.sname, c.stype) for c in cfgs]
        host = gethostname()
        futures = [remotecall(bind_globals, p, specs, prefix, host) for p in procs() if p != myid()]
        bind_globals(specs, prefix, host)
        foreach(fetch, futures)
    catch
        unlink_shm(names, prefix)
        rethrow()
    end
    nothing
end

"""
    unlink_shm(shmcfg, shmpfx = "")

Removes the segments of `shmcfg` (a `ShmCfg`, a `Symbol`, or an array of
them) from /dev/shm and has every process drop its mapping and its
bindings (Main globals set to `nothing`, this task's storage). An array
still referred to stays valid until it is unreachable. Names that do not
exist are ignored (as PTools).
"""
function unlink_shm(shmcfg, shmpfx = "")
    names = name_list(shmcfg)
    prefix = prefix_of(shmpfx)
    drop_views_everywhere(names, prefix)
    unlink_in_library(names, prefix)
    nothing
end

# ---------------------------------------------------------------- orphans

function names_in(bytes::Vector{UInt8})
    out = String[]
    start = 1
    for i in eachindex(bytes)
        if bytes[i] == 0x00
            push!(out, String(bytes[start:i-1]))
            start = i + 1
        end
    end
    out
end

function orphan_listing(fn, prefix)
    buf = CAPI.Buffer()
    p = prefix === nothing ? nothing : prefix_of(prefix)
    st = p === nothing ? fn(C_NULL, buf, C_NULL) : fn(p, buf, C_NULL)
    CAPI.check(st)
    names_in(CAPI.take_buffer!(buf))
end

"""
    shm_orphans(prefix = nothing) -> Vector{String}

The segments in /dev/shm (their names there) of clusters whose head process
is gone, with `prefix` only unless `nothing`. Needs no cluster. A live
cluster's segments are never listed.
"""
shm_orphans(prefix = nothing) = orphan_listing(CAPI.cluster_shm_orphans, prefix)

"""
    remove_shm_orphans(prefix = nothing) -> Vector{String}

Unlinks what [`shm_orphans`](@ref)`(prefix)` lists; returns the names removed.
"""
remove_shm_orphans(prefix = nothing) = orphan_listing(CAPI.cluster_shm_remove_orphans, prefix)
