"""The text ``satseg inspect`` prints by default: :func:`format_inspection` of a report.

Why apart from the inspectors: the report is a plain JSON-able dict (``--json`` prints
it as is); turning it into lines is presentation only.
"""

from __future__ import annotations


def format_inspection(report: dict) -> str:
    """The report as the text ``satseg inspect`` prints (``--json`` prints the dict)."""
    kind = report["kind"]
    if kind == "raster":
        lines = _fmt_raster(report)
    elif kind == "folder":
        lines = _fmt_folder(report)
    elif kind == "dataset":
        lines = _fmt_dataset(report)
    else:
        lines = _fmt_patches(report)
    for w in report.get("warnings") or []:
        lines.append(f"warning: {w}")
    return "\n".join(lines)


def _fmt_counts(entries: list[dict], key: str, fmt=str) -> str:
    return ", ".join(f"{fmt(e[key])} ({e['files']})" for e in entries)


def _fmt_raster(r: dict, title: str = "raster") -> list[str]:
    dtypes = ",".join(dict.fromkeys(r["dtypes"]))
    lines = [f"{title}: {r['path']} ({r['driver']})",
             f"size: {r['width']} x {r['height']} px, {r['count']} band(s) of {dtypes}"]
    if any(r["band_names"]):
        lines.append("band names: " + ", ".join(n or "-" for n in r["band_names"]))
    if r["georeferenced"]:
        t = r["transform"]
        lines.append(f"crs: {r['crs'] or 'none'}; pixel size {r['pixel_size'][0]:.10g} x "
                     f"{r['pixel_size'][1]:.10g}; origin ({t[2]:.12g}, {t[5]:.12g})")
    else:
        lines.append("crs: none (not georeferenced: a plain pixel grid)")
    lines.append(f"nodata: {'none' if r['nodata'] is None else r['nodata']}")
    lay = r["layout"]
    block = "x".join(str(x) for x in lay["block"]) if lay["block"] else "?"
    ov = ", ".join(str(o) for o in lay["overviews"]) or "none"
    lines.append(f"layout: {'tiled' if lay['tiled'] else 'blocks'} {block}, compression "
                 f"{lay['compression'] or 'none'}, overviews {ov}")
    s = r["sample"]
    how = "decimated" if s["decimated"] else "every pixel"
    lines.append(f"band statistics (sample {s['width']} x {s['height']} px, {how}):")
    nw = max(len(str(b["name"] or b["band"])) for b in r["bands"] + [{"name": "band"}])
    lines.append(f"  {'band':<{nw}}  {'dtype':<8} {'min':>12} {'max':>12} {'mean':>12} "
                 f"{'nodata':>7}")
    for b in r["bands"]:
        lines.append(f"  {str(b['name'] or b['band']):<{nw}}  {b['dtype']:<8} "
                     f"{_cell(b['min']):>12} {_cell(b['max']):>12} {_cell(b['mean']):>12} "
                     f"{100 * b['nodata_fraction']:6.1f}%")
    if r.get("mask"):
        lines += _fmt_mask(r["mask"], "every pixel" if not s["decimated"] else
                           f"sample of {s['width']} x {s['height']} px")
    if r.get("mask_file"):
        lines.append("")
        lines += _fmt_raster(r["mask_file"], title="mask")
    return lines


def _cell(x) -> str:
    if x is None:
        return "-"
    return f"{x:.6g}" if isinstance(x, float) else str(x)


def _fmt_mask(m: dict, how: str) -> list[str]:
    kinds = ", ".join(f"{k} {n}" for k, n in m["kinds"].items())
    lines = [f"mask values ({kinds} file(s); {how}; {m['pixels_counted']} px counted"
             + (f", {m['nodata_pixels']} nodata" if m["nodata_pixels"] else "") + "):"]
    shown = 30
    for e in m["colours"][:shown]:
        vals = e.get("palette_values")
        extra = f" index {','.join(str(v) for v in vals)}" if vals else ""
        lines.append(f"  {e['colour']}{extra:<10} {e.get('class', ''):<16} {e['pixels']:>12} px "
                     f"{100 * e['share']:6.2f}%  in {e['files']} file(s)")
    for e in m["values"][:shown]:
        lines.append(f"  value {e['value']:<6} {e.get('class', ''):<16} {e['pixels']:>12} px "
                     f"{100 * e['share']:6.2f}%  in {e['files']} file(s)")
    more = max(0, m["distinct_colours"] - shown) + max(0, m["distinct_values"] - shown)
    if more:
        lines.append(f"  ... and {more} more")
    if m.get("not_masks"):
        nm = m["not_masks"]
        lines.append(f"  not read as masks: {nm['count']} file(s), e.g. {nm['first'][0]['path']}"
                     f": {nm['first'][0]['reason']}")
    if "undeclared" in m:
        bad = m["undeclared"]
        if bad:
            what = [e["colour"] if "colour" in e else f"value {e['value']}" for e in bad]
            lines.append("NOT declared in classes.json (satseg patches would refuse them): "
                         + ", ".join(f"{w} ({e['pixels']} px)" for w, e in zip(what, bad[:20]))
                         + (f" and {len(bad) - 20} more" if len(bad) > 20 else ""))
        else:
            lines.append("every value/colour is declared in classes.json")
    return lines


def _fmt_side(name: str, s: dict) -> list[str]:
    suffixes = ", ".join(f"{k} {n}" for k, n in s["suffixes"].items())
    read = (f"headers read {s['headers_read']} of {s['files']} (stopped at --max-files)"
            if s["stopped"] else "all headers read")
    lines = [f"{name}: {s['files']} file(s) ({suffixes}); {read}"]
    if s["sizes"]:
        wr, hr = s["width_range"], s["height_range"]
        lines.append(f"  sizes: {s['distinct_sizes']} distinct, width {wr[0]}..{wr[1]}, height "
                     f"{hr[0]}..{hr[1]}; most common: "
                     + ", ".join(f"{e['width']}x{e['height']} ({e['files']})" for e in s["sizes"]))
    lines.append("  bands: " + ", ".join(f"{e['count']} x {e['dtype']} ({e['files']})"
                                         for e in s["bands"])
                 + (f"; {s['palette_files']} with a colour table" if s["palette_files"] else ""))
    lines.append("  crs: " + _fmt_counts(s["crs"], "crs"))
    lines.append("  nodata: " + _fmt_counts(s["nodata"], "nodata",
                                            lambda v: "none" if v is None else str(v)))
    if s.get("other_files"):
        lines.append("  other files (ignored): " + ", ".join(
            f"{k} {n}" for k, n in s["other_files"].items()))
    un = s["unreadable"]
    if un["count"]:
        lines.append(f"  unreadable: {un['count']} (e.g. {un['first'][0]['error']})")
    return lines


def _fmt_folder(r: dict) -> list[str]:
    lines = [f"folder: {r['path']}" + (f"  masks: {r['masks_path']}" if r["masks_path"] else "")
             + (f"  pair: {r['pair']}" if r["pair"] else "")]
    lines += _fmt_side("images", r["images"])
    if r.get("masks"):
        lines += _fmt_side("masks", r["masks"])
    pr = r.get("pairing")
    if pr is not None:
        if "error" in pr:
            lines.append(f"pairing: error: {pr['error']}")
        else:
            lines.append(f"pairs: {pr['pairs']}; images without mask: {pr['unpaired_images']}; "
                         f"masks without image: {pr['unpaired_masks']}")
            for key, what in (("unpaired_images_first", "image without mask"),
                              ("unpaired_masks_first", "mask without image")):
                for p in pr[key]:
                    lines.append(f"  {what}: {p}")
    sm = r.get("size_mismatches")
    if sm and sm["count"]:
        lines.append(f"image/mask size differs: {sm['count']} pair(s)")
        for e in sm["first"]:
            lines.append(f"  {e['image']} {e['image_size'][0]}x{e['image_size'][1]} vs "
                         f"{e['mask']} {e['mask_size'][0]}x{e['mask_size'][1]}")
    mv = r.get("mask_values")
    if mv:
        if mv["sampled"]:
            how = (f"sampled: {mv['files_sampled']} of {mv['files_total']} file(s), at most "
                   f"{mv['max_side']} px on the long side each")
        else:
            how = f"all {mv['files_total']} file(s), every pixel"
        lines += _fmt_mask(mv, how)
    return lines


def _fmt_dataset(r: dict) -> list[str]:
    if r.get("summary"):
        lines = [f"dataset folder: {r['path']}", r["summary"]]
    else:
        n = r.get("num_examples") or {}
        lines = [f"dataset folder: {r['path']} ({r['task']})",
                 f"bands: {', '.join(r.get('bands') or [])} ({r.get('image_dtype')}, "
                 f"{r.get('patch_size')} px, nodata {r.get('nodata')})",
                 "examples: " + ", ".join(f"{s} {k}" for s, k in n.items()),
                 "classes: " + ", ".join(r.get("class_names") or [])]
    lines.append(f"crs: {r['crs'] or 'none'}")
    return lines


def _fmt_patches(r: dict) -> list[str]:
    if r["kind"] == "classification_patches":
        return [f"classification patches: {r['path']}",
                f"patches: {r['patches']} of {r['size']} px; bands "
                f"{', '.join(r['bands'] or [])} ({r['dtype']}); crs {r['crs'] or 'none'}",
                "per class: " + ", ".join(f"{k} {n}" for k, n in
                                          r["patches_per_class"].items())]
    lines = [f"patches folder: {r['path']}",
             f"patches: {r['patches']} of {r['size']} x {r['size']} px (stride {r['stride']})"
             + (f" from {r['sources']} source image(s)" if r["sources"] else ""),
             f"bands: {', '.join(r['bands'])} ({r['dtype']}, nodata "
             f"{'none' if r['nodata'] is None else r['nodata']})",
             f"crs: {r['crs'] or 'none'}",
             "class pixels (from index.csv):"]
    nw = max(len(c["name"]) for c in r["classes"] + [{"name": "ignored"}])
    for c in r["classes"]:
        lines.append(f"  {c['id']:>3} {c['name']:<{nw}} {c['colour']} {c['pixels']:>12} px "
                     f"{100 * c['share']:6.2f}%")
    lines.append(f"      {'ignored':<{nw}} {'':7} {r['ignored_pixels']:>12} px")
    return lines
