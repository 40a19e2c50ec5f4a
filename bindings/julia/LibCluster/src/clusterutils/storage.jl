# Finding, storing and loading data (ClusterUtils' lookup, filterpaths,
# dictify, save, load). save/load go through libcluster's file container
# (`cluster_save` / `cluster_load`: a header with a version, the content
# type and a checksum; written to a temporary file, fsynced and renamed,
# so that a crash mid-save leaves the old file), the payload being
# `Serialization.serialize`'s bytes under the content type below.

const CONTENT_TYPE = "julia.serialization"

"""
    lookup(mod::Module, srchterm::Regex) -> Vector{Symbol}

The names of `mod` (all of them, private ones included) matching `srchterm`.
"""
lookup(modname::Module, srchterm::Regex) = filter(n -> occursin(srchterm, string(n)), names(modname; all = true))

"""
    filterpaths(dir, srch) -> Vector{String}

The absolute paths of the entries of `dir` whose names match `srch` (a
regular expression, or a string making one).
"""
function filterpaths(dir::AbstractString, srch::Union{AbstractString,Regex})
    srchr = srch isa Regex ? srch : Regex(srch)
    absdir = abspath(dir)
    [joinpath(absdir, nm) for nm in readdir(absdir) if occursin(srchr, nm)]
end

"""
    dictify(syms::Symbol...; mod = Main) -> Dict{Symbol,Any}

Each name => its value in `mod`.
"""
dictify(syms::Symbol...; mod::Module = Main) = Dict{Symbol,Any}(s => getfield(mod, s) for s in syms)

"""
    save(path, value)
    save(path, names::Symbol...; mod = Main)   # dictify(names...; mod)

Writes `value` (serialized) to `path` in libcluster's checksummed
container, atomically: the file is either the old one or the new one, even
if the process dies meanwhile. With names, the `Dict{Symbol,Any}` of
their values in `mod` is saved.
"""
function save(fp::AbstractString, A::Any)
    io = IOBuffer()
    serialize(io, A)
    data = take!(io)
    path = String(fp)
    '\0' in path && throw(ArgumentError("save: a path cannot hold NUL"))
    GC.@preserve data CAPI.check(CAPI.cluster_save(path, CONTENT_TYPE, pointer(data), Csize_t(length(data))))
    nothing
end

save(fp::AbstractString, syms::Symbol...; mod::Module = Main) = save(fp, dictify(syms...; mod = mod))

"""
    load(path)

The value `save` wrote to `path`. A missing or unreadable file is a
`ClusterError` (CLUSTER_ERR_IO), a damaged, truncated or foreign one a
`ClusterError` (CLUSTER_ERR_CORRUPT) saying what is wrong with it, and a
container of another content type an `ErrorException` naming it.
"""
function load(fp::AbstractString)
    path = String(fp)
    '\0' in path && throw(ArgumentError("load: a path cannot hold NUL"))
    data = CAPI.Buffer()
    ctype = CAPI.Buffer()
    CAPI.check(CAPI.cluster_load(path, data, ctype))
    t = String(CAPI.take_buffer!(ctype))
    bytes = CAPI.take_buffer!(data)
    t == CONTENT_TYPE || throw(ErrorException("load: $path holds content of type \"$t\", not \"$CONTENT_TYPE\" " *
                                              "(it was not written by ClusterUtils.save)"))
    try
        deserialize(IOBuffer(bytes))
    catch err
        throw(ErrorException("load: the contents of $path cannot be deserialized here: " * sprint(showerror, err)))
    end
end
