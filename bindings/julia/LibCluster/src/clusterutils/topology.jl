# Topology (ClusterUtils' describepids & co) from the host name each process
# reported when it joined, which travels with membership: one library call
# (`cluster_hosts`), no message to any process. And broadcast_shared: one
# shared-memory segment per host (PTools' shared memory, shm.jl), made by
# a representative of that host and mapped by its processes.

"Every live process with its host name, ascending pid (`cluster_hosts`)."
function host_names()
    buf = CAPI.Buffer()
    CAPI.check(CAPI.cluster_hosts(context(), buf))
    Pair{Int,String}[p => String(b) for (p, b) in CAPI.parts(CAPI.take_buffer!(buf))]
end

"The host name process `pid` reported when it joined (`cluster_host_of`)."
function host_of(pid::Integer)
    buf = CAPI.Buffer()
    st = CAPI.cluster_host_of(context(), Int32(pid), buf)
    st == CAPI.CLUSTER_OK || throw(library_exception(CAPI.last_error(st), pid))
    String(CAPI.take_buffer!(buf))
end

"""
    describepids(pids; filterfn = host -> true) -> Dict{Int,Vector{Int}}

The processes of `pids` grouped by host: for each host whose name passes
`filterfn`, its smallest pid (its representative) => its pids, sorted.
"""
function describepids(pids::AbstractVector{<:Integer}; filterfn = (x) -> true)
    hosts = Dict(host_names())
    groups = Dict{String,Vector{Int}}()
    for p in pids
        h = get(hosts, Int(p), nothing)
        h === nothing && throw(ErrorException("describepids: no process with id $p is in the cluster"))
        push!(get!(() -> Int[], groups, h), Int(p))
    end
    topo = Dict{Int,Vector{Int}}()
    for (h, ps) in groups
        filterfn(h) || continue
        members = sort!(unique(ps))
        topo[members[1]] = members
    end
    topo
end

"""
    describepids(; remote = 0, filterfn = host -> true) -> Dict{Int,Vector{Int}}

Every process grouped by host (see `describepids(pids)`): `remote = 0` the
hosts other than process 1's, `1` only process 1's, `2` all of them;
`filterfn(hostname)` selects among those.

`length(topo)` is the number of hosts, `keys(topo)` a process on each,
`values(topo)` the processes of each.
"""
function describepids(; remote::Integer = 0, filterfn = (x) -> true)
    remote in (0, 1, 2) || throw(ArgumentError("describepids: remote is 0 (other hosts), 1 (process 1's host) or 2 (all); got $remote"))
    head = host_of(1)
    wanted = remote == 0 ? (h -> h != head) : remote == 1 ? (h -> h == head) : (h -> true)
    describepids(procs(); filterfn = h -> wanted(h) && filterfn(h))
end

"The processes on process 1's host, sorted."
function localpids()
    topo = describepids(remote = 1)
    topo[first(keys(topo))]
end

"""
    invtopology(topo) -> Dict{Int,Int}

Each process of `topo` (from `describepids`) => the representative of its host.
"""
function invtopology(topology)
    myrep = Dict{Int,Int}()
    for (rep, pids) in topology
        for pid in pids
            myrep[pid] = rep
        end
    end
    myrep
end

"""
The processes of `topology` in the order that spreads work over the hosts
(the first of each host, then the second of each...); hosts of equal sizes.
"""
function preferredorder(topology)
    groups = [topology[r] for r in sort!(collect(keys(topology)))]
    vec(permutedims(reduce(hcat, groups)))
end

"""
    chunkit(axlen, ncomps) -> Vector{UnitRange{Int}}

`1:axlen` cut into `ncomps` consecutive ranges of sizes differing by at
most one, as ClusterUtils' (the larger ones where it puts them: the
remainder of `axlen ÷ ncomps` goes to the chunks from the second on,
wrapping to the first).
"""
function chunkit(axlen::Int, ncomps::Int)
    ncomps > 0 || throw(ArgumentError("chunkit: ncomps must be positive; got $ncomps"))
    sizes = zeros(Int, ncomps)
    for i in 1:axlen
        sizes[i % ncomps + 1] += 1
    end
    stops = cumsum(sizes)
    [(stops[i] - sizes[i] + 1):stops[i] for i in 1:ncomps]
end

# ------------------------------------------------------------ broadcast_shared

# Segments of broadcast_shared have a prefix of their own (PTools' users
# name theirs): one per host, all with the user's name.
const SHARED_PREFIX = "clusterutils"

# /dev/shm names of the segments this process made, removed when it exits
# (the head's own library removes its cluster's segments from its host's
# /dev/shm when it closes; a representative on another host does it here).
const MADE_HERE = Set{String}()
const EXIT_HOOK = Ref(false)
const MADE_BY = Ref(0)                  # the OS pid that made them (not a fork of it)

function remove_made_here()
    getpid() == MADE_BY[] || return nothing
    for n in MADE_HERE
        rm(joinpath("/dev/shm", n); force = true)
    end
    empty!(MADE_HERE)
    nothing
end

"On each process: drops its view of segment `name`; a representative also unlinks it (the old copies on its host)."
function forget_shared(name::Symbol, unlink::Bool)
    PTools.drop_views([name], SHARED_PREFIX)
    unlink || return nothing
    try
        run_op(out -> CAPI.cluster_shm_unlink_async(context(), String(name), SHARED_PREFIX, out))
    catch err
        err isa CAPI.ClusterError && err.status == CAPI.CLUSTER_ERR_NOT_FOUND && return nothing
        rethrow()
    end
    nothing
end

"On a representative: makes its host's segment (mapped by `pids`, its host's processes) and copies `value` in."
function make_shared(name::Symbol, @nospecialize(T::Type), @nospecialize(value::AbstractArray), pids::Vector{Int})
    sname = String(name)
    dims = UInt64[d for d in size(value)]
    ids = Int32.(pids)
    prefix = SHARED_PREFIX
    GC.@preserve sname prefix dims ids begin
        spec = Ref(CAPI.ShmSpec(pointer(sname), pointer(prefix), PTools.elem_tag(T), UInt32(sizeof(T)),
                                isempty(dims) ? Ptr{UInt64}(C_NULL) : pointer(dims), Csize_t(length(dims))))
        run_op(out -> CAPI.cluster_shm_create_async(context(), spec, pointer(ids), Csize_t(length(ids)), out))
    end
    out = Ref{Ptr{Cvoid}}(C_NULL)
    CAPI.check(CAPI.cluster_shm_find(context(), sname, prefix, out))
    try
        push!(MADE_HERE, CAPI.read_string(CAPI.cluster_shm_os_name, out[]))
    finally
        CAPI.cluster_shm_free(out[])
    end
    if !EXIT_HOOK[]
        EXIT_HOOK[] = true
        MADE_BY[] = getpid()
        atexit(remove_made_here)
    end
    a = PTools.view_of(name, prefix, T)
    copyto!(a, value)
    nothing
end

"On each process of a host: binds Main's `name` to its view of the host's segment."
bind_shared(name::Symbol, @nospecialize(T::Type)) = (PTools.bind_global(name, PTools.view_of(name, SHARED_PREFIX, T)); nothing)

"""
    broadcast_shared(topo, T, value, name)

On each host of `topo` (from [`describepids`](@ref)): one shared-memory
array of element type `T` (a bits type) and the shape of `value` (an
array of any shape), holding a copy of `value` (converted to `T`), bound
to the global `name` of Main on every process of that host. A write on
one of them is seen by the others of its host; each host has its own copy.
The segments of this process's earlier broadcast of the name are replaced
(the processes of either drop their views first).
They go when the cluster closes (and a representative's when it exits).
"""
function broadcast_shared(topo::AbstractDict, @nospecialize(T::Type), @nospecialize(value::AbstractArray), name::Symbol)
    isbitstype(T) && sizeof(T) > 0 ||
        throw(ArgumentError("broadcast_shared: the element type must be a bits type of some size; got $T"))
    hosts = Pair{Int,Vector{Int}}[]
    for r in sort!(Int[k for k in keys(topo)])
        members = sort!(unique(Int[p for p in topo[r]]))
        r in members || throw(ArgumentError("broadcast_shared: representative $r is not among its host's processes $members"))
        push!(hosts, r => members)
    end
    reps = Set(first.(hosts))
    everyone = reduce(vcat, last.(hosts); init = Int[])
    # The processes of this broadcast and of this process's last one of the
    # name (only Julia processes are asked: a C worker has no view).
    old_reps, old_everyone = get(BROADCASTS, name, (Set{Int}(), Int[]))
    live = Set(procs())
    all_reps = intersect(union(reps, old_reps), live)
    concerned = sort!(collect(intersect(union(Set(everyone), old_everyone, all_reps), live)))
    unbind_all() = wait_each([p => (try remotecall(forget_shared, p, name, p in all_reps) catch err; err end)
                              for p in concerned])
    unbind_all()
    BROADCASTS[name] = (reps, everyone)
    try
        wait_each([r => (try remotecall(make_shared, r, name, T, value, members) catch err; err end)
                   for (r, members) in hosts])
        wait_each(call_each(bind_shared, everyone, name, T))
    catch
        try unbind_all() catch end
        rethrow()
    end
    nothing
end

# name => (representatives, processes) of this process's last broadcast_shared of it.
const BROADCASTS = Dict{Symbol,Tuple{Set{Int},Vector{Int}}}()
